/*
 * Micro benchmarks of the engine's inner loops, in memory (io_mem), no qemu
 * comparison:
 *   - L2 lookup: qcow2_image_block_status() of one cluster, random and
 *     sequential, over a fully allocated image;
 *   - allocating cluster writes (L2 + refcount updates) into an empty image;
 *   - one-cluster compress/decompress with zlib (deflate) and zstd;
 *   - xxh3-128 throughput over data and over zero runs (digest's paths).
 * Each figure is the median of BENCH_RUNS (default 5) repetitions.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "qcow2/qcow2.h"
#include "qcow2_int.h"

static unsigned runs;

static void check_lib(int rc, const char *what)
{
    if (rc < 0)
        bu_die("%s: %s", what, qcow2_error_last()->message);
}

static void report(const char *what, double *samples, double units, const char *unit)
{
    double t = bu_median(samples, runs);

    printf("  %-52s %12.1f %s\n", what, t > 0 ? units / t : 0, unit);
}

/* A qcow2 image in memory: size bytes, cluster_size, optionally preallocated. */
static qcow2_image *mem_image(uint64_t size, uint32_t cluster_size, qcow2_prealloc prealloc)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    qcow2_io *io;

    if (qcow2_io_mem_new(&io, NULL, 0) != 0)
        bu_die("io_mem: out of memory");
    co.size = size;
    co.cluster_size = cluster_size;
    co.preallocation = prealloc;
    check_lib(qcow2_image_create_io(io, "mem.qcow2", &co), "create");
    oo.flags = QCOW2_OPEN_RDWR;
    check_lib(qcow2_image_open_io(&img, io, "mem.qcow2", &oo), "open");
    return img;
}

/* An in-memory image of size bytes with every cluster written (allocated data). */
static qcow2_image *filled_image(uint64_t size, uint32_t cs)
{
    qcow2_image *img = mem_image(size, cs, QCOW2_PREALLOC_OFF);
    const size_t chunk = 2 * BU_MiB;
    uint8_t *buf = bu_xmalloc(chunk);
    bu_rng rng;

    bu_rng_init(&rng, BU_SEED);
    bu_fill_random(&rng, buf, chunk);
    for (uint64_t off = 0; off < size; off += chunk)
        check_lib(qcow2_image_write(img, buf, chunk, off), "write");
    check_lib(qcow2_image_flush(img), "flush");
    free(buf);
    return img;
}

static void bench_l2_lookup(uint64_t size, uint32_t cs)
{
    qcow2_image *img = filled_image(size, cs);
    const uint64_t lookups = 1u << 21;
    uint64_t clusters = size / cs;
    double rnd[64], seq[64];
    char what[96];
    bu_rng rng;

    for (unsigned r = 0; r < runs; r++) {
        qcow2_extent e;
        double t0;

        bu_rng_init(&rng, BU_SEED);
        t0 = bu_now();
        for (uint64_t i = 0; i < lookups; i++) {
            uint64_t off = bu_rng_below(&rng, clusters) * cs;
            check_lib(qcow2_image_block_status(img, NULL, off, cs, &e), "block status");
        }
        rnd[r] = bu_now() - t0;
        t0 = bu_now();
        for (uint64_t i = 0; i < lookups; i++)
            check_lib(qcow2_image_block_status(img, NULL, (i % clusters) * cs, cs, &e),
                      "block status");
        seq[r] = bu_now() - t0;
    }
    snprintf(what, sizeof(what), "L2 lookup, random, %" PRIu64 " MiB image, %u KiB clusters",
             size >> 20, cs >> 10);
    report(what, rnd, (double)lookups, "lookups/s");
    snprintf(what, sizeof(what), "L2 lookup, sequential, %" PRIu64 " MiB, %u KiB clusters",
             size >> 20, cs >> 10);
    report(what, seq, (double)lookups, "lookups/s");
    qcow2_image_close(img);
}

static void bench_alloc_writes(void)
{
    const uint64_t size = 1 * BU_GiB, n = 4096;
    const uint32_t cs = 64 * 1024;
    uint8_t *buf = bu_xmalloc(cs);
    double t[64];
    bu_rng rng;

    bu_rng_init(&rng, BU_SEED);
    bu_fill_random(&rng, buf, cs);
    for (unsigned r = 0; r < runs; r++) {
        qcow2_image *img = mem_image(size, cs, QCOW2_PREALLOC_OFF);
        double t0 = bu_now();
        for (uint64_t i = 0; i < n; i++) {
            uint64_t off = bu_rng_below(&rng, size / cs) * cs;
            check_lib(qcow2_image_write(img, buf, cs, off), "write");
        }
        check_lib(qcow2_image_flush(img), "flush");
        t[r] = bu_now() - t0;
        qcow2_image_close(img);
    }
    report("allocating 64 KiB writes, random, 1 GiB image (mem)", t, (double)n, "writes/s");
    free(buf);
}

static void bench_compress(unsigned type, const char *name)
{
    const size_t cs = 64 * 1024, n = 256;
    uint8_t *src = bu_xmalloc(cs * n), *dst = bu_xmalloc(cs * n), *out = bu_xmalloc(cs);
    size_t *clen = bu_xmalloc(n * sizeof(*clen));
    double tc[64], td[64];
    uint64_t total = 0;
    char what[96];
    bu_rng rng;

    bu_rng_init(&rng, BU_SEED);
    bu_fill_text(&rng, src, cs * n);
    for (unsigned r = 0; r < runs; r++) {
        double t0 = bu_now();
        total = 0;
        for (size_t i = 0; i < n; i++) {
            long c = qcow2__compress(type, dst + i * cs, cs - 1, src + i * cs, cs);
            if (c <= 0)
                bu_die("%s: compress failed (%ld)", name, c);
            clen[i] = (size_t)c;
            total += (uint64_t)c;
        }
        tc[r] = bu_now() - t0;
        t0 = bu_now();
        for (size_t i = 0; i < n; i++) {
            if (qcow2__decompress(type, out, cs, dst + i * cs, clen[i]) != 0)
                bu_die("%s: decompress failed", name);
        }
        td[r] = bu_now() - t0;
        if (memcmp(out, src + (n - 1) * cs, cs) != 0)
            bu_die("%s: round trip differs", name);
    }
    snprintf(what, sizeof(what), "compress 64 KiB clusters, %s (ratio %.2f)", name,
             (double)(cs * n) / (double)total);
    report(what, tc, (double)(cs * n) / 1e6, "MB/s");
    snprintf(what, sizeof(what), "decompress 64 KiB clusters, %s", name);
    report(what, td, (double)(cs * n) / 1e6, "MB/s");
    free(src);
    free(dst);
    free(out);
    free(clen);
}

static void bench_hash(void)
{
    const size_t len = 64 * BU_MiB;
    const uint64_t zeroes = 4 * BU_GiB;
    uint8_t *buf = bu_xmalloc(len), d[16];
    double th[64], tz[64];
    bu_rng rng;

    bu_rng_init(&rng, BU_SEED);
    bu_fill_random(&rng, buf, len);
    for (unsigned r = 0; r < runs; r++) {
        qcow2__hash *h;
        double t0;

        check_lib(qcow2__hash_new(&h), "hash");
        t0 = bu_now();
        for (size_t off = 0; off < len; off += 2 * BU_MiB)
            qcow2__hash_update(h, buf + off, 2 * BU_MiB);
        qcow2__hash_final(h, d);
        th[r] = bu_now() - t0;
        qcow2__hash_free(h);

        check_lib(qcow2__hash_new(&h), "hash");
        t0 = bu_now();
        qcow2__hash_zeroes(h, zeroes);
        qcow2__hash_final(h, d);
        tz[r] = bu_now() - t0;
        qcow2__hash_free(h);
    }
    report("xxh3-128 over data (2 MiB updates)", th, (double)len / 1e6, "MB/s");
    report("xxh3-128 over zero runs (qcow2__hash_zeroes)", tz, (double)zeroes / 1e6, "MB/s");
    printf("  %-52s %12.1f s\n", "  -> digest of an empty 1 TiB image would take",
           bu_median(tz, runs) * (double)(BU_TiB / zeroes));
    free(buf);
}

int main(void)
{
    runs = bu_runs(5);
    if (runs > 64)
        runs = 64;
    printf("micro benchmarks (in memory, median of %u runs)\n", runs);
    bench_l2_lookup(1 * BU_GiB, 64 * 1024);
    bench_l2_lookup(256 * BU_MiB, 4 * 1024);
    bench_alloc_writes();
    bench_compress(0, "zlib");
    bench_compress(1, "zstd");
    bench_hash();
    return 0;
}
