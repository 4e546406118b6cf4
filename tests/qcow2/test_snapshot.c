/*
 * Tests for qcow2/snapshot.c: the snapshot table parser, white-box, on a
 * handle filled in by hand (header fields only) over an in-memory file:
 * tables written by qemu-img, and hostile tables that must be refused with
 * QCOW2_ECORRUPT and a message naming the structure.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2_int.h"

#define CS 65536u

static qcow2_image *fake_image(const uint8_t *file, size_t len, uint32_t version, uint32_t nb,
                               uint64_t snap_off)
{
    qcow2_image *img = calloc(1, sizeof(*img));

    cr_assert_not_null(img);
    cr_assert_eq(qcow2_io_mem_new(&img->io, file, len), 0);
    img->name = strdup("snap.qcow2");
    img->fmt = QCOW2_FORMAT_QCOW2;
    img->size = 1u << 20;
    img->file_size = len;
    img->cluster_bits = 16;
    img->cluster_size = CS;
    img->hdr.version = version;
    img->hdr.nb_snapshots = nb;
    img->hdr.snap_off = snap_off;
    return img;
}

static void fake_free(qcow2_image *img)
{
    qcow2__snapshots_free(img);
    qcow2_io_close(img->io);
    free(img->name);
    free(img);
}

/* Append one entry at p; returns its padded length. */
static size_t put_entry(uint8_t *p, uint64_t l1_off, uint32_t l1_size, const char *id,
                        const char *name, uint32_t extra_len, const uint8_t *extra)
{
    size_t id_len = strlen(id), name_len = strlen(name);
    size_t len = 40 + extra_len + id_len + name_len;

    memset(p, 0, qcow2__align_up(len, 8));
    qcow2__put_be64(p, l1_off);
    qcow2__put_be32(p + 8, l1_size);
    qcow2__put_be16(p + 12, (uint16_t)id_len);
    qcow2__put_be16(p + 14, (uint16_t)name_len);
    qcow2__put_be32(p + 16, 1700000000u);
    qcow2__put_be32(p + 20, 42);
    qcow2__put_be64(p + 24, 123456789);
    qcow2__put_be32(p + 32, 777);
    qcow2__put_be32(p + 36, extra_len);
    if (extra_len)
        memcpy(p + 40, extra, extra_len);
    memcpy(p + 40 + extra_len, id, id_len);
    memcpy(p + 40 + extra_len + id_len, name, name_len);
    return qcow2__align_up(len, 8);
}

/* A 4-cluster file: table in cluster 2, an L1 in cluster 3. */
static uint8_t *file4(void)
{
    uint8_t *f = calloc(1, 4 * CS);

    cr_assert_not_null(f);
    return f;
}

Test(snapshot, no_snapshots_is_fine_whatever_the_offset)
{
    uint8_t *f = file4();
    qcow2_image *img = fake_image(f, 4 * CS, 3, 0, 12345);

    cr_assert_eq(qcow2__snapshots_load(img), 0);
    cr_assert_eq(qcow2_snapshot_count(img), 0);
    fake_free(img);
    free(f);
}

Test(snapshot, parses_v2_and_v3_entries)
{
    uint8_t *f = file4(), extra[32];
    size_t pos = 2 * CS;
    qcow2_image *img;
    qcow2_snapshot_info si;

    /* v2-style entry without extra data, then one with 24 bytes + unknown 8. */
    pos += put_entry(f + pos, 3 * CS, 16, "1", "first", 0, NULL);
    qcow2__put_be64(extra, 5ull << 32);   /* vm_state_size, 64-bit */
    qcow2__put_be64(extra + 8, 2u << 20); /* disk size */
    qcow2__put_be64(extra + 16, 99);      /* icount */
    memset(extra + 24, 0xcd, 8);          /* unknown, kept */
    put_entry(f + pos, 3 * CS, 8, "2", "second snapshot", 32, extra);

    img = fake_image(f, 4 * CS, 2, 2, 2 * CS);
    cr_assert_eq(qcow2__snapshots_load(img), 0, "%s", qcow2_error_last()->message);
    cr_assert_eq(qcow2_snapshot_count(img), 2);

    cr_assert_eq(qcow2_snapshot_get(img, 0, &si), 0);
    cr_assert_str_eq(si.id, "1");
    cr_assert_str_eq(si.name, "first");
    cr_assert_eq(si.l1_offset, 3 * CS);
    cr_assert_eq(si.l1_size, 16);
    cr_assert_eq(si.date_sec, 1700000000u);
    cr_assert_eq(si.date_nsec, 42);
    cr_assert_eq(si.vm_clock_nsec, 123456789);
    cr_assert_eq(si.vm_state_size, 777, "32-bit field without extra data");
    cr_assert_eq(si.disk_size, 1u << 20, "current size without extra data");
    cr_assert_eq(si.icount, -1);

    cr_assert_eq(qcow2_snapshot_get(img, 1, &si), 0);
    cr_assert_str_eq(si.name, "second snapshot");
    cr_assert_eq(si.vm_state_size, 5ull << 32);
    cr_assert_eq(si.disk_size, 2u << 20);
    cr_assert_eq(si.icount, 99);
    cr_assert_eq(img->snaps[1].extra_len, 32);
    cr_assert_eq(memcmp(img->snaps[1].extra, extra, 32), 0, "extra data kept verbatim");

    cr_assert_eq(qcow2_snapshot_get(img, 2, &si), QCOW2_EINVAL);
    fake_free(img);
    free(f);
}

/* Load a one-entry table and expect QCOW2_ECORRUPT with what in the message. */
static void expect_corrupt(qcow2_image *img, const char *what)
{
    cr_assert_eq(qcow2__snapshots_load(img), QCOW2_ECORRUPT);
    cr_assert_not_null(strstr(qcow2_error_last()->message, what), "message: %s",
                       qcow2_error_last()->message);
    cr_assert_not_null(strstr(qcow2_error_last()->message, "snap.qcow2: "));
    cr_assert_null(img->snaps);
    cr_assert_eq(img->nb_snaps, 0);
}

Test(snapshot, refuses_bad_table_placement)
{
    uint8_t *f = file4();
    qcow2_image *img;

    put_entry(f + 2 * CS, 3 * CS, 1, "1", "a", 16, (uint8_t[16]){0});
    img = fake_image(f, 4 * CS, 3, 1, 2 * CS + 8);
    expect_corrupt(img, "not cluster aligned");
    fake_free(img);
    img = fake_image(f, 4 * CS, 3, 1, 0);
    expect_corrupt(img, "header");
    fake_free(img);
    img = fake_image(f, 4 * CS, 3, 1, 8 * CS);
    expect_corrupt(img, "end of the file");
    fake_free(img);
    img = fake_image(f, 4 * CS, 3, QCOW2_MAX_SNAPSHOTS + 1, 2 * CS);
    expect_corrupt(img, "limit");
    fake_free(img);
    /* 4000 entries of at least 40 bytes cannot fit in the two clusters left. */
    img = fake_image(f, 4 * CS, 3, 4000, 2 * CS);
    expect_corrupt(img, "end of the file");
    fake_free(img);
    free(f);
}

Test(snapshot, refuses_bad_entries)
{
    uint8_t *f = file4();
    uint8_t extra[16] = {0};
    qcow2_image *img;

    put_entry(f + 2 * CS, 3 * CS + 512, 1, "1", "a", 16, extra);
    img = fake_image(f, 4 * CS, 3, 1, 2 * CS);
    expect_corrupt(img, "L1 table offset 0x30200 is not cluster aligned");
    fake_free(img);

    put_entry(f + 2 * CS, 3 * CS, (uint32_t)(QCOW2_MAX_L1_BYTES / 8 + 1), "1", "a", 16, extra);
    img = fake_image(f, 4 * CS, 3, 1, 2 * CS);
    expect_corrupt(img, "L1 table of");
    fake_free(img);

    put_entry(f + 2 * CS, 3 * CS, CS / 8 + 1, "1", "a", 16, extra);
    img = fake_image(f, 4 * CS, 3, 1, 2 * CS);
    expect_corrupt(img, "past the end of the file");
    fake_free(img);

    put_entry(f + 2 * CS, 0, 1, "1", "a", 16, extra);
    img = fake_image(f, 4 * CS, 3, 1, 2 * CS);
    expect_corrupt(img, "overlaps the header");
    fake_free(img);

    put_entry(f + 2 * CS, 3 * CS, 1, "1", "a", 8, extra);
    img = fake_image(f, 4 * CS, 3, 1, 2 * CS);
    expect_corrupt(img, "version 3 needs at least 16");
    fake_free(img);

    put_entry(f + 2 * CS, 3 * CS, 1, "1", "a", 16, extra);
    qcow2__put_be32(f + 2 * CS + 36, QCOW2_MAX_SNAPSHOT_EXTRA + 8);
    img = fake_image(f, 4 * CS, 3, 1, 2 * CS);
    expect_corrupt(img, "extra data of 1032 bytes");
    fake_free(img);

    /* Name running past the end of the file. */
    put_entry(f + 2 * CS, 3 * CS, 1, "1", "a", 16, extra);
    qcow2__put_be16(f + 2 * CS + 14, 65535);
    img = fake_image(f, 2 * CS + 100, 3, 1, 2 * CS);
    expect_corrupt(img, "entry 0 extends past the end");
    fake_free(img);
    free(f);
}

Test(snapshot, every_truncation_is_refused_cleanly)
{
    uint8_t *f = file4();
    uint8_t extra[24] = {0};
    size_t pos = 2 * CS;

    pos += put_entry(f + pos, 3 * CS, 1, "1", "alpha", 24, extra);
    put_entry(f + pos, 3 * CS, 1, "2", "beta", 24, extra);
    /* The padding of the last entry need not be in the file. */
    pos += 40 + 24 + 1 + 4;
    for (size_t len = 2 * CS + 1; len < pos; len++) {
        /* Keep the L1 inside the (shorter) file by pointing at cluster 1. */
        qcow2__put_be64(f + 2 * CS, CS);
        qcow2__put_be64(f + 2 * CS + 72, CS);
        qcow2_image *img = fake_image(f, len, 3, 2, 2 * CS);
        cr_assert_eq(qcow2__snapshots_load(img), QCOW2_ECORRUPT, "len %zu", len - 2 * CS);
        fake_free(img);
    }
    {
        /* The whole table, and not a byte more, loads. */
        qcow2_image *img = fake_image(f, pos, 3, 2, 2 * CS);
        cr_assert_eq(qcow2__snapshots_load(img), 0, "%s", qcow2_error_last()->message);
        cr_assert_str_eq(img->snaps[1].name, "beta");
        fake_free(img);
    }
    free(f);
}

/* ---- a table written by qemu-img ------------------------------------------------ */

Test(snapshot, reads_qemu_img_snapshots)
{
    char dir[] = "/tmp/qcow2-snap-XXXXXX", img_path[64], cmd[512];
    FILE *fp;
    uint8_t *f;
    long n;
    qcow2_image *img;
    qcow2_snapshot_info si;

    if (system("qemu-img --version >/dev/null 2>&1") != 0)
        cr_skip_test("qemu-img not installed");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(img_path, sizeof(img_path), "%s/s.qcow2", dir);
    snprintf(cmd, sizeof(cmd),
             "qemu-img create -q -f qcow2 %s 3M && qemu-img snapshot -c first %s && "
             "qemu-img resize -q %s 5M && qemu-img snapshot -c 'the second' %s",
             img_path, img_path, img_path, img_path);
    cr_assert_eq(system(cmd), 0);
    fp = fopen(img_path, "rb");
    cr_assert_not_null(fp);
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f = malloc((size_t)n);
    cr_assert_eq(fread(f, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);

    img = fake_image(f, (size_t)n, qcow2__be32(f + 4), qcow2__be32(f + 60), qcow2__be64(f + 64));
    img->size = qcow2__be64(f + 24);
    cr_assert_eq(qcow2__snapshots_load(img), 0, "%s", qcow2_error_last()->message);
    cr_assert_eq(qcow2_snapshot_count(img), 2);
    cr_assert_eq(qcow2_snapshot_get(img, 0, &si), 0);
    cr_assert_str_eq(si.id, "1");
    cr_assert_str_eq(si.name, "first");
    cr_assert_eq(si.disk_size, 3u << 20);
    cr_assert_eq(si.vm_state_size, 0);
    cr_assert_eq(si.l1_offset % CS, 0);
    cr_assert_gt(si.l1_offset, 0);
    cr_assert_eq(qcow2_snapshot_get(img, 1, &si), 0);
    cr_assert_str_eq(si.id, "2");
    cr_assert_str_eq(si.name, "the second");
    cr_assert_eq(si.disk_size, 5u << 20);
    cr_assert_geq(img->snaps[1].extra_len, 16);
    fake_free(img);
    free(f);
    unlink(img_path);
    rmdir(dir);
}
