/*
 * Tests for qcow2/compress.c: round trips for deflate and zstd, the codec
 * properties the read path depends on (trailing garbage, truncated or
 * garbage input, multiple zstd frames, 4 KiB and 32 KiB deflate windows),
 * the "does not fit" rule of the write path, and clusters written by real
 * qemu-img decoded byte for byte.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2_int.h"

#define CS 65536u

static uint8_t *cluster_text(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len);
    static const char *words[] = {"qcow2 ", "cluster ", "refcount ", "snapshot ", "L2 ", "zero "};

    cr_assert_not_null(p);
    for (size_t i = 0; i < len;) {
        const char *w = words[(i / 7 + seed) % 6];
        for (size_t k = 0; w[k] && i < len; k++)
            p[i++] = (uint8_t)w[k];
    }
    return p;
}

static uint8_t *random_bytes(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len);
    uint32_t x = seed * 2654435761u + 1;

    cr_assert_not_null(p);
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
    return p;
}

static const unsigned types[] = {QCOW2_COMPRESSION_ZLIB, QCOW2_COMPRESSION_ZSTD};

Test(compress, round_trip_both_codecs)
{
    for (size_t t = 0; t < 2; t++) {
        uint8_t *src = cluster_text(CS, 1);
        uint8_t *c = malloc(CS - 1), *d = malloc(CS);
        long n = qcow2__compress(types[t], c, CS - 1, src, CS);

        cr_assert_gt(n, 0, "type %u", types[t]);
        cr_assert_lt(n, CS / 4, "text should compress well");
        cr_assert_eq(qcow2__decompress(types[t], d, CS, c, (size_t)n), 0);
        cr_assert_eq(memcmp(src, d, CS), 0);
        free(src);
        free(c);
        free(d);
    }
}

Test(compress, small_clusters_round_trip)
{
    for (size_t t = 0; t < 2; t++) {
        for (size_t cs = 512; cs <= (2u << 20); cs *= 4) {
            uint8_t *src = cluster_text(cs, (unsigned)cs);
            uint8_t *c = malloc(cs - 1), *d = malloc(cs);
            long n = qcow2__compress(types[t], c, cs - 1, src, cs);

            cr_assert_gt(n, 0, "type %u cs %zu", types[t], cs);
            cr_assert_eq(qcow2__decompress(types[t], d, cs, c, (size_t)n), 0);
            cr_assert_eq(memcmp(src, d, cs), 0);
            free(src);
            free(c);
            free(d);
        }
    }
}

Test(compress, incompressible_returns_zero)
{
    for (size_t t = 0; t < 2; t++) {
        uint8_t *src = random_bytes(CS, 7);
        uint8_t *c = malloc(CS - 1);

        cr_assert_eq(qcow2__compress(types[t], c, CS - 1, src, CS), 0, "type %u", types[t]);
        /* A tiny buffer never fits either. */
        cr_assert_eq(qcow2__compress(types[t], c, 8, src, CS), 0);
        free(src);
        free(c);
    }
}

Test(compress, trailing_garbage_is_ignored)
{
    for (size_t t = 0; t < 2; t++) {
        uint8_t *src = cluster_text(CS, 2);
        uint8_t *c = malloc(2 * CS), *d = malloc(CS);
        uint8_t *junk = random_bytes(1024, 3);
        long n = qcow2__compress(types[t], c, CS - 1, src, CS);

        cr_assert_gt(n, 0);
        memcpy(c + n, junk, 1024);
        cr_assert_eq(qcow2__decompress(types[t], d, CS, c, (size_t)n + 1024), 0, "type %u",
                     types[t]);
        cr_assert_eq(memcmp(src, d, CS), 0);
        free(src);
        free(c);
        free(d);
        free(junk);
    }
}

Test(compress, truncated_input_is_corrupt)
{
    for (size_t t = 0; t < 2; t++) {
        uint8_t *src = random_bytes(CS / 2, 4);
        uint8_t *mixed = cluster_text(CS, 4);
        uint8_t *c = malloc(CS), *d = malloc(CS);
        long n;

        /* Half random, half text: the stream is long, so cuts land everywhere. */
        memcpy(mixed, src, CS / 2);
        n = qcow2__compress(types[t], c, CS - 1, mixed, CS);
        cr_assert_gt(n, 0);
        for (long cut = 0; cut < n; cut += 1 + cut / 8)
            cr_assert_eq(qcow2__decompress(types[t], d, CS, c, (size_t)cut), QCOW2_ECORRUPT,
                         "type %u cut %ld of %ld", types[t], cut, n);
        free(src);
        free(mixed);
        free(c);
        free(d);
    }
}

Test(compress, garbage_input_is_corrupt_not_a_crash)
{
    uint8_t *d = malloc(CS);

    for (unsigned seed = 0; seed < 200; seed++) {
        uint8_t *junk = random_bytes(4096, seed);
        for (size_t t = 0; t < 2; t++)
            cr_assert_eq(qcow2__decompress(types[t], d, CS, junk, 4096), QCOW2_ECORRUPT,
                         "type %u seed %u", types[t], seed);
        free(junk);
    }
    free(d);
}

Test(compress, short_stream_is_corrupt)
{
    /* A valid stream for 4 KiB cannot fill a 64 KiB cluster. */
    for (size_t t = 0; t < 2; t++) {
        uint8_t *src = cluster_text(4096, 5);
        uint8_t *c = malloc(4096), *d = malloc(CS);
        long n = qcow2__compress(types[t], c, 4095, src, 4096);

        cr_assert_gt(n, 0);
        cr_assert_eq(qcow2__decompress(types[t], d, CS, c, (size_t)n), QCOW2_ECORRUPT);
        /* But asking for only the first 1000 bytes of it works. */
        cr_assert_eq(qcow2__decompress(types[t], d, 1000, c, (size_t)n), 0);
        cr_assert_eq(memcmp(d, src, 1000), 0);
        free(src);
        free(c);
        free(d);
    }
}

/* Raw deflate with the given window, as other writers might produce. */
static size_t raw_deflate(int window_bits, uint8_t *dst, size_t cap, const uint8_t *src,
                          size_t len)
{
    z_stream zs;

    memset(&zs, 0, sizeof(zs));
    cr_assert_eq(deflateInit2(&zs, 9, Z_DEFLATED, window_bits, 9, Z_DEFAULT_STRATEGY), Z_OK);
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)len;
    zs.next_out = dst;
    zs.avail_out = (uInt)cap;
    cr_assert_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
    deflateEnd(&zs);
    return zs.total_out;
}

Test(compress, deflate_accepts_4k_and_32k_windows)
{
    /* Repeats 20 KiB apart only a 32 KiB window can reference. */
    uint8_t *src = random_bytes(CS, 9);
    uint8_t *c = malloc(2 * CS), *d = malloc(CS);

    memcpy(src + 20000, src, 20000);
    for (int wb = -12; wb >= -15; wb -= 3) {
        size_t n = raw_deflate(wb, c, 2 * CS, src, CS);
        cr_assert_eq(qcow2__decompress(QCOW2_COMPRESSION_ZLIB, d, CS, c, n), 0, "window %d", wb);
        cr_assert_eq(memcmp(src, d, CS), 0);
    }
    free(src);
    free(c);
    free(d);
}

Test(compress, deflate_output_has_no_zlib_header)
{
    uint8_t *src = cluster_text(CS, 6);
    uint8_t *c = malloc(CS - 1), *d = malloc(CS);
    long n = qcow2__compress(QCOW2_COMPRESSION_ZLIB, c, CS - 1, src, CS);
    z_stream zs;

    cr_assert_gt(n, 0);
    /* Decodes as raw deflate with a 4 KiB window, exactly what qemu expects. */
    memset(&zs, 0, sizeof(zs));
    cr_assert_eq(inflateInit2(&zs, -12), Z_OK);
    zs.next_in = c;
    zs.avail_in = (uInt)n;
    zs.next_out = d;
    zs.avail_out = CS;
    cr_assert_eq(inflate(&zs, Z_FINISH), Z_STREAM_END);
    inflateEnd(&zs);
    cr_assert_eq(zs.total_out, CS);
    cr_assert_eq(memcmp(src, d, CS), 0);
    free(src);
    free(c);
    free(d);
}

Test(compress, zstd_multiple_frames)
{
    uint8_t *src = cluster_text(CS, 8);
    uint8_t *c = malloc(2 * CS), *d = malloc(CS);
    size_t a = ZSTD_compress(c, CS, src, CS / 3, 3);
    size_t b;

    cr_assert(!ZSTD_isError(a));
    b = ZSTD_compress(c + a, CS, src + CS / 3, CS - CS / 3, 19);
    cr_assert(!ZSTD_isError(b));
    memset(c + a + b, 0xa5, 300); /* garbage after the last frame */
    cr_assert_eq(qcow2__decompress(QCOW2_COMPRESSION_ZSTD, d, CS, c, a + b + 300), 0);
    cr_assert_eq(memcmp(src, d, CS), 0);
    free(src);
    free(c);
    free(d);
}

Test(compress, unknown_type_is_refused)
{
    uint8_t buf[64] = {0}, out[64];

    cr_assert_eq(qcow2__decompress(7, out, sizeof(out), buf, sizeof(buf)), QCOW2_EUNSUPPORTED);
    cr_assert_eq(qcow2__compress(7, out, sizeof(out), buf, sizeof(buf)), QCOW2_EUNSUPPORTED);
}

/* ---- clusters written by qemu-img ------------------------------------------- */

static bool have_qemu_img(void)
{
    return system("qemu-img --version >/dev/null 2>&1") == 0;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf;
    long n;

    cr_assert_not_null(fp, "%s", path);
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = malloc((size_t)n);
    cr_assert_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

/* Convert a raw file with qemu-img -c and decode every cluster by hand. */
static void check_qemu_clusters(const char *ctype, unsigned type, unsigned cluster_bits)
{
    char dir[] = "/tmp/qcow2-compress-XXXXXX";
    char raw[128], img[128], cmd[512];
    size_t cs = (size_t)1 << cluster_bits, nclusters = 8, img_len, raw_len;
    uint8_t *data, *file, *d = malloc(cs);
    FILE *fp;

    if (!have_qemu_img())
        cr_skip_test("qemu-img not installed");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(raw, sizeof(raw), "%s/in.raw", dir);
    snprintf(img, sizeof(img), "%s/out.qcow2", dir);
    data = cluster_text(cs * nclusters, cluster_bits);
    for (size_t i = 0; i < nclusters; i++) /* vary the clusters */
        memset(data + i * cs + i * 37, (int)('A' + i), 50);
    fp = fopen(raw, "wb");
    cr_assert_not_null(fp);
    cr_assert_eq(fwrite(data, 1, cs * nclusters, fp), cs * nclusters);
    fclose(fp);
    snprintf(cmd, sizeof(cmd),
             "qemu-img convert -c -f raw -O qcow2 -o compression_type=%s,cluster_size=%zu "
             "%s %s",
             ctype, cs, raw, img);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    file = slurp(img, &img_len);
    raw_len = cs * nclusters;

    {
        uint64_t l1_off = qcow2__be64(file + 40);
        uint64_t l2_off = qcow2__be64(file + l1_off) & QCOW2_L1E_OFFSET_MASK;
        unsigned x = 62 - (cluster_bits - 8);
        size_t decoded = 0;

        cr_assert_eq(qcow2__be32(file + 20), cluster_bits);
        cr_assert_eq(file[104], type, "compression type field");
        cr_assert_lt(l2_off, img_len);
        for (size_t i = 0; i < nclusters; i++) {
            uint64_t l2e = qcow2__be64(file + l2_off + 8 * i);
            uint64_t coff = l2e & ((1ull << x) - 1);
            uint64_t nsec = ((l2e >> x) & ((1ull << (cluster_bits - 8)) - 1)) + 1;
            uint64_t csize = nsec * 512 - (coff & 511);

            cr_assert(l2e & QCOW2_OFLAG_COMPRESSED, "cluster %zu not compressed", i);
            /* The last sector may run past EOF: read what exists. */
            if (coff + csize > img_len)
                csize = img_len - coff;
            cr_assert_eq(qcow2__decompress(type, d, cs, file + coff, csize), 0, "cluster %zu",
                         i);
            cr_assert_eq(memcmp(d, data + i * cs, cs), 0, "cluster %zu differs", i);
            decoded++;
        }
        cr_assert_eq(decoded * cs, raw_len);
    }
    free(data);
    free(file);
    free(d);
    unlink(raw);
    unlink(img);
    rmdir(dir);
}

Test(compress, decodes_qemu_zlib_clusters)
{
    check_qemu_clusters("zlib", QCOW2_COMPRESSION_ZLIB, 16);
}

Test(compress, decodes_qemu_zstd_clusters)
{
    check_qemu_clusters("zstd", QCOW2_COMPRESSION_ZSTD, 16);
}

Test(compress, decodes_qemu_zstd_small_clusters)
{
    check_qemu_clusters("zstd", QCOW2_COMPRESSION_ZSTD, 12);
}
