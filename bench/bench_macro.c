/*
 * Macro benchmarks: the layer operations of the performance goals against qemu-img on the
 * same images, on the same disk, in the same run.
 *
 *   bench_macro setup DIR     build the scenario images in DIR/p (once)
 *   bench_macro run DIR       time every scenario, print one table
 *   bench_macro fs NAME DIR   scenario 8 on a mounted file system that shares
 *                             blocks (bench/bench_fs.sh mounts it): images in
 *                             DIR/p, times and a table
 *   bench_macro op ...        one timed operation (run in a child process)
 *
 * Every timed operation is a child process (ours re-executes this program
 * with "op"), measured with wait4: wall time, user+system CPU, peak RSS.
 * Before each timed run the inputs are fresh copies and, when permitted,
 * the page cache is dropped, so both sides start cold.
 *
 * Environment: BENCH_RUNS (runs per measurement), BENCH_SCALE (divide the
 * data sizes by 1, 2, 4 or 8 when the disk is short; run.sh sets it),
 * BENCH_ONLY (a list of scenario numbers, e.g. "6,7": set up and time only
 * those).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "bench_util.h"
#include "qcow2/qcow2.h"

#define CLUSTER (64u * 1024)
#define RAW_CHUNK (16u * 1024 * 1024) /* base images hold data in runs of this size */
#define CHAIN_DEPTH 64
#define MAX_RUNS 64

/* Sizes of the scenarios, divided by BENCH_SCALE. */
struct sizes {
    unsigned scale;
    uint64_t s1_vsize;      /* 4 GiB base */
    uint64_t s1_base_data;  /* 1 GiB of data in it */
    uint64_t s1_clusters;   /* 8192 scattered 64 KiB clusters in the overlay */
    uint64_t cp_bytes;      /* 512 MiB for cp + sync */
    uint64_t ch_vsize;      /* 1 GiB chain base */
    uint64_t ch_base_data;  /* 512 MiB of data in it */
    uint64_t ch_clusters;   /* 64 clusters per layer */
};

static struct sizes sizes_get(void)
{
    const char *s = getenv("BENCH_SCALE");
    struct sizes z;
    unsigned scale = s && *s ? (unsigned)atoi(s) : 1;

    if (scale != 1 && scale != 2 && scale != 4 && scale != 8)
        bu_die("BENCH_SCALE must be 1, 2, 4 or 8");
    z.scale = scale;
    z.s1_vsize = 4 * BU_GiB / scale;
    z.s1_base_data = 1 * BU_GiB / scale;
    z.s1_clusters = 8192 / scale;
    z.cp_bytes = 512 * BU_MiB / scale;
    z.ch_vsize = 1 * BU_GiB / scale;
    z.ch_base_data = 512 * BU_MiB / scale;
    z.ch_clusters = 64 / scale;
    return z;
}

/* Whether scenario n is wanted (BENCH_ONLY unset: all). */
static bool want(int n)
{
    const char *s = getenv("BENCH_ONLY");

    if (!s || !*s)
        return true;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end != s && v == n)
            return true;
        s = *end ? end + 1 : end;
    }
    return false;
}

static void check_lib(int rc, const char *what)
{
    if (rc < 0)
        bu_die("%s: %s", what, qcow2_error_last()->message);
}

/* ---- setup --------------------------------------------------------------- */

/* data bytes in RAW_CHUNK runs spread evenly over vsize, from rng. */
static void each_data_run(uint64_t vsize, uint64_t data, bu_rng *rng, uint8_t *buf,
                          void (*put)(void *ctx, const uint8_t *buf, uint64_t off), void *ctx)
{
    uint64_t runs = data / RAW_CHUNK, stride = vsize / runs;

    for (uint64_t i = 0; i < runs; i++) {
        bu_fill_random(rng, buf, RAW_CHUNK);
        put(ctx, buf, i * stride);
    }
}

static void put_raw(void *ctx, const uint8_t *buf, uint64_t off)
{
    int fd = *(int *)ctx;
    size_t done = 0;

    while (done < RAW_CHUNK) {
        ssize_t n = pwrite(fd, buf + done, RAW_CHUNK - done, (off_t)(off + done));
        if (n <= 0)
            bu_die("pwrite: %s", strerror(errno));
        done += (size_t)n;
    }
}

static void put_qcow2(void *ctx, const uint8_t *buf, uint64_t off)
{
    check_lib(qcow2_image_write(ctx, buf, RAW_CHUNK, off), "write");
}

static void make_raw_base(const char *path, uint64_t vsize, uint64_t data, uint64_t seed)
{
    uint8_t *buf = bu_xmalloc(RAW_CHUNK);
    bu_rng rng;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    if (fd < 0 || ftruncate(fd, (off_t)vsize) < 0)
        bu_die("%s: %s", path, strerror(errno));
    bu_rng_init(&rng, seed);
    each_data_run(vsize, data, &rng, buf, put_raw, &fd);
    if (fsync(fd) < 0 || close(fd) < 0)
        bu_die("%s: %s", path, strerror(errno));
    free(buf);
}

static qcow2_image *create_open(const char *path, uint64_t vsize, const char *backing,
                                const char *backing_fmt)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    co.size = vsize;
    co.cluster_size = CLUSTER;
    co.backing_file = backing;
    co.backing_format = backing_fmt;
    unlink(path);
    check_lib(qcow2_image_create(path, &co), path);
    oo.flags = QCOW2_OPEN_RDWR;
    check_lib(qcow2_image_open(&img, path, &oo), path);
    return img;
}

static void make_qcow2_base(const char *path, uint64_t vsize, uint64_t data, uint64_t seed)
{
    uint8_t *buf = bu_xmalloc(RAW_CHUNK);
    qcow2_image *img = create_open(path, vsize, NULL, NULL);
    bu_rng rng;

    bu_rng_init(&rng, seed);
    each_data_run(vsize, data, &rng, buf, put_qcow2, img);
    check_lib(qcow2_image_flush(img), path);
    qcow2_image_close(img);
    free(buf);
}

/* Write n distinct random clusters (random order) of random data into img. */
static void scatter_clusters(qcow2_image *img, uint64_t n, bu_rng *rng)
{
    uint64_t total = qcow2_image_size(img) / CLUSTER;
    uint8_t *buf = bu_xmalloc(CLUSTER);

    if (n > total)
        bu_die("more clusters than the image holds");
    if (total <= (1u << 24)) {
        /* Partial Fisher-Yates: the first n of a random permutation. */
        uint32_t *idx = bu_xmalloc(total * sizeof(*idx));
        for (uint64_t i = 0; i < total; i++)
            idx[i] = (uint32_t)i;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t j = i + bu_rng_below(rng, total - i);
            uint32_t t = idx[i];
            idx[i] = idx[j];
            idx[j] = t;
            bu_fill_random(rng, buf, CLUSTER);
            check_lib(qcow2_image_write(img, buf, CLUSTER, (uint64_t)idx[i] * CLUSTER), "write");
        }
        free(idx);
    } else {
        /* Huge sparse image: a few clusters, collisions are harmless. */
        for (uint64_t i = 0; i < n; i++) {
            bu_fill_random(rng, buf, CLUSTER);
            check_lib(qcow2_image_write(img, buf, CLUSTER, bu_rng_below(rng, total) * CLUSTER),
                      "write");
        }
    }
    check_lib(qcow2_image_flush(img), "flush");
    free(buf);
}

static void make_overlay(const char *path, uint64_t vsize, const char *backing, const char *fmt,
                         uint64_t clusters, uint64_t seed)
{
    qcow2_image *img = create_open(path, vsize, backing, fmt);
    bu_rng rng;

    bu_rng_init(&rng, seed);
    scatter_clusters(img, clusters, &rng);
    qcow2_image_close(img);
}

static void step(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void step(const char *fmt, ...)
{
    static double t0;
    va_list ap;

    if (!t0)
        t0 = bu_now();
    fprintf(stderr, "  [%6.1fs] ", bu_now() - t0);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int cmd_setup(const char *dir)
{
    struct sizes z = sizes_get();
    char name[64], prev[64];
    bu_rng rng;

    if (chdir(dir) < 0)
        bu_die("%s: %s", dir, strerror(errno));
    bu_sh("rm -rf p w && mkdir -p p/chain w");
    if (chdir("p") < 0)
        bu_die("p: %s", strerror(errno));

    if (!want(1) && !want(2) && !want(5))
        goto chain;
    step("scenario 1: %" PRIu64 " MiB raw base with %" PRIu64 " MiB of data", z.s1_vsize >> 20,
         z.s1_base_data >> 20);
    make_raw_base("s1_base.raw", z.s1_vsize, z.s1_base_data, BU_SEED + 1);
    step("scenario 1: overlay with %" PRIu64 " scattered 64 KiB clusters", z.s1_clusters);
    make_overlay("s1_top.qcow2", z.s1_vsize, "s1_base.raw", "raw", z.s1_clusters, BU_SEED + 2);
    step("scenario 2: the same content with a qcow2 base");
    make_qcow2_base("s2_base.qcow2", z.s1_vsize, z.s1_base_data, BU_SEED + 1);
    make_overlay("s2_top.qcow2", z.s1_vsize, "s2_base.qcow2", "qcow2", z.s1_clusters, BU_SEED + 2);
    step("scenario 1: %" PRIu64 " MiB file for cp + sync", z.cp_bytes >> 20);
    make_raw_base("cp_src.bin", z.cp_bytes, z.cp_bytes, BU_SEED + 5);
    step("scenario 5: raw copy of the scenario-1 content (qemu-img convert)");
    bu_sh("qemu-img convert -f qcow2 -O raw s1_top.qcow2 s1_flat.raw");

chain:
    if (!want(3) && !want(4))
        goto sparse;
    step("scenario 3: %d-deep chain over a %" PRIu64 " MiB raw base (%" PRIu64 " MiB data), %" PRIu64
         " clusters per layer",
         CHAIN_DEPTH, z.ch_vsize >> 20, z.ch_base_data >> 20, z.ch_clusters);
    make_raw_base("chain/base.raw", z.ch_vsize, z.ch_base_data, BU_SEED + 3);
    bu_rng_init(&rng, BU_SEED + 4);
    snprintf(prev, sizeof(prev), "base.raw");
    for (int i = 1; i <= CHAIN_DEPTH; i++) {
        qcow2_image *img;
        char path[96];
        snprintf(name, sizeof(name), "l%02d.qcow2", i);
        snprintf(path, sizeof(path), "chain/%s", name);
        img = create_open(path, z.ch_vsize, prev, i == 1 ? "raw" : "qcow2");
        scatter_clusters(img, z.ch_clusters, &rng);
        qcow2_image_close(img);
        snprintf(prev, sizeof(prev), "%s", name);
    }
    step("scenario 4: the chain flattened into one qcow2 layer (qemu-img convert)");
    bu_sh("qemu-img convert -f qcow2 -O qcow2 chain/l%02d.qcow2 chain_flat.qcow2", CHAIN_DEPTH);

sparse:
    if (want(7)) {
        step("scenario 7: 1 TiB qcow2 with %" PRIu64 " MiB of data; a fully allocated raw of "
             "%" PRIu64 " MiB", (uint64_t)((BU_GiB / z.scale) >> 20), (uint64_t)((BU_GiB / z.scale) >> 20));
        make_qcow2_base("s7_1t.qcow2", BU_TiB, BU_GiB / z.scale, BU_SEED + 7);
        make_raw_base("s7_full.raw", BU_GiB / z.scale, BU_GiB / z.scale, BU_SEED + 8);
    }
    if (!want(6))
        goto check;
    step("scenario 6: 1 GiB and 1 TiB sparse qcow2 images with 64 scattered clusters");
    bu_rng_init(&rng, BU_SEED + 6);
    {
        qcow2_image *img = create_open("s6_1g.qcow2", BU_GiB, NULL, NULL);
        scatter_clusters(img, 64, &rng);
        qcow2_image_close(img);
        img = create_open("s6_1t.qcow2", BU_TiB, NULL, NULL);
        scatter_clusters(img, 64, &rng);
        qcow2_image_close(img);
    }

check:
    step("qemu-img check on every qcow2 image written by libqcow2");
    bu_sh("for f in s1_top.qcow2 s2_base.qcow2 s2_top.qcow2 chain/l*.qcow2 s6_1g.qcow2 "
          "s6_1t.qcow2 s7_1t.qcow2; do [ -e \"$f\" ] || continue; qemu-img check -q \"$f\" || "
          "{ echo \"check failed: $f\" >&2; exit 1; }; done");
    step("setup done");
    return 0;
}

/* ---- timed operations (child side) ---------------------------------------- */

static qcow2_image *open_ro(const char *path)
{
    qcow2_image *img;

    check_lib(qcow2_image_open(&img, path, NULL), path);
    return img;
}

static int cmd_op(int argc, char **argv)
{
    const char *op = argc > 0 ? argv[0] : "";

    if (!strcmp(op, "commit") && argc == 2) {
        qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
        qcow2_image *top;
        oo.flags = QCOW2_OPEN_RDWR;
        check_lib(qcow2_image_open(&top, argv[1], &oo), argv[1]);
        check_lib(qcow2_image_commit(top, NULL), "commit");
        qcow2_image_close(top);
    } else if (!strcmp(op, "convert") && argc == 4) {
        qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
        qcow2_image *src = open_ro(argv[2]);
        co.format = qcow2_format_from_name(argv[1]);
        check_lib(qcow2_image_convert(src, argv[3], &co), "convert");
        qcow2_image_close(src);
    } else if (!strcmp(op, "digest") && argc == 2) {
        qcow2_image *img = open_ro(argv[1]);
        uint8_t d[16];
        check_lib(qcow2_image_digest(img, d, NULL, NULL), "digest");
        for (int i = 0; i < 16; i++)
            printf("%02x", d[i]);
        printf("\n");
        qcow2_image_close(img);
    } else if (!strcmp(op, "xxh3all") && argc == 2) {
        /* The digest's first definition: XXH3-128 over every byte of the content. */
        qcow2_image *img = open_ro(argv[1]);
        const size_t chunk = 2 * BU_MiB;
        uint8_t *buf = bu_xmalloc(chunk);
        uint64_t size = qcow2_image_size(img);
        XXH3_state_t *st = XXH3_createState();
        XXH128_hash_t h;
        if (!st || XXH3_128bits_reset(st) != XXH_OK)
            bu_die("xxh3: no memory");
        for (uint64_t off = 0; off < size; off += chunk) {
            size_t n = (size_t)(size - off < chunk ? size - off : chunk);
            check_lib(qcow2_image_read(img, buf, n, off), "read");
            (void)XXH3_128bits_update(st, buf, n);
        }
        h = XXH3_128bits_digest(st);
        printf("%016" PRIx64 "%016" PRIx64 "\n", (uint64_t)h.high64, (uint64_t)h.low64);
        XXH3_freeState(st);
        free(buf);
        qcow2_image_close(img);
    } else if (!strcmp(op, "compare") && argc == 3) {
        qcow2_image *a = open_ro(argv[1]), *b = open_ro(argv[2]);
        int rc = qcow2_image_compare(a, b, false, NULL, NULL, NULL);
        check_lib(rc, "compare");
        qcow2_image_close(a);
        qcow2_image_close(b);
        if (rc != 0)
            bu_die("compare: the images differ");
    } else if (!strcmp(op, "read") && argc == 2) {
        qcow2_image *img = open_ro(argv[1]);
        const size_t chunk = 2 * BU_MiB;
        uint8_t *buf = bu_xmalloc(chunk);
        uint64_t size = qcow2_image_size(img), sum = 0;
        for (uint64_t off = 0; off < size; off += chunk) {
            size_t n = (size_t)(size - off < chunk ? size - off : chunk);
            check_lib(qcow2_image_read(img, buf, n, off), "read");
            sum += buf[0];
        }
        printf("%" PRIu64 "\n", sum);
        free(buf);
        qcow2_image_close(img);
    } else if (!strcmp(op, "randread") && argc == 2) {
        /* 100,000 reads of 4 KiB at random 4 KiB-aligned places (fixed seed): a guest's view. */
        qcow2_image *img = open_ro(argv[1]);
        uint8_t buf[4096];
        uint64_t blocks = qcow2_image_size(img) / sizeof(buf), sum = 0;
        bu_rng rng;
        bu_rng_init(&rng, 4);
        for (int i = 0; i < 100000; i++) {
            uint64_t off = bu_rng_below(&rng, blocks) * sizeof(buf);
            check_lib(qcow2_image_read(img, buf, sizeof(buf), off), "read");
            sum += buf[0];
        }
        printf("%" PRIu64 "\n", sum);
        qcow2_image_close(img);
    } else {
        bu_die("unknown op");
    }
    return 0;
}

/* ---- measurement ----------------------------------------------------------- */

static char self_path[4096];
static bool caches_dropped = true;
static unsigned cache_drop_failures;

/* One program measured over several runs. */
struct meas {
    double wall[MAX_RUNS], cpu[MAX_RUNS];
    unsigned n;
    long rss_kb; /* the largest peak over the runs */
};

/* How to run one side: argv, a shell command run before every run (untimed), cold caches. */
struct spec {
    const char *label;
    char *argv[12];
    const char *prep;   /* NULL: none */
    const char *verify; /* run once after the first run; NULL: none */
    bool cold;
};

static double med(const double *v, unsigned n)
{
    double t[MAX_RUNS];

    memcpy(t, v, n * sizeof(*v));
    return bu_median(t, n);
}

/* Measure the specs round-robin (run i of each before run i+1 of any). */
static void measure(struct spec *specs, struct meas *out, unsigned nspecs, unsigned runs)
{
    if (runs > MAX_RUNS)
        runs = MAX_RUNS;
    memset(out, 0, nspecs * sizeof(*out));
    for (unsigned r = 0; r < runs; r++) {
        for (unsigned i = 0; i < nspecs; i++) {
            struct spec *s = &specs[i];
            bu_result res;

            if (s->prep)
                bu_sh("%s", s->prep);
            if (s->cold && !bu_drop_caches()) {
                caches_dropped = false;
                cache_drop_failures++;
            }
            if (bu_spawn(s->argv, "w/last.log", &res) != 0) {
                fprintf(stderr, "bench: %s failed (status %d); its output:\n", s->label,
                        res.status);
                bu_sh("cat w/last.log >&2");
                exit(1);
            }
            out[i].wall[r] = res.wall;
            out[i].cpu[r] = res.user + res.sys;
            if (res.maxrss_kb > out[i].rss_kb)
                out[i].rss_kb = res.maxrss_kb;
            out[i].n = r + 1;
            fprintf(stderr, "    %-34s run %u/%u: %7.3f s wall, %7.3f s cpu, %s peak\n", s->label,
                    r + 1, runs, res.wall, res.user + res.sys,
                    bu_fmt_kib((char[16]){0}, 16, res.maxrss_kb));
            if (r == 0 && s->verify)
                bu_sh("%s", s->verify);
        }
    }
}

/* A row of the table. */
enum target_kind {
    T_SPEEDUP, /* ref/qsnap >= goal */
    T_RSS,     /* qsnap RSS <= ref RSS + the default L2 cache + 1 MiB (bounded memory) */
    T_TIME,    /* qsnap wall time <= goal seconds */
    T_NONE,
};

struct row {
    char name[64];
    bool use_cpu; /* compare CPU time instead of wall time */
    const struct meas *q, *r;
    enum target_kind kind;
    double goal;
    char target[40];
    bool mem_vs_qemu; /* the reference is qemu-img: check qsnap RSS <= its RSS */
};

#define MAX_ROWS 32
static struct row rows[MAX_ROWS];
static unsigned nrows;

static struct row *add_row(const char *name, const struct meas *q, const struct meas *r,
                           enum target_kind kind, double goal, const char *target, bool mem_vs_qemu)
{
    struct row *w;

    if (nrows == MAX_ROWS)
        bu_die("too many rows");
    w = &rows[nrows++];
    memset(w, 0, sizeof(*w));
    snprintf(w->name, sizeof(w->name), "%s", name);
    w->q = q;
    w->r = r;
    w->kind = kind;
    w->goal = goal;
    snprintf(w->target, sizeof(w->target), "%s", target);
    w->mem_vs_qemu = mem_vs_qemu;
    return w;
}

static void print_table(void)
{
    static const char *const line = "----------------------------------------------------------"
                                    "----------------------------------------------------------"
                                    "-------------------------------";
    unsigned miss = 0;

    printf("\n%-52s %8s %8s %8s %8s %8s %10s %10s  %-30s %-6s %s\n", "scenario [reference]",
           "qsnap s", "ref s", "speedup", "qsnap cpu", "ref cpu", "qsnap RSS", "ref RSS",
           "target (speedup = ref/qsnap)", "result", "mem");
    printf("%.*s\n", 170, line);
    for (unsigned i = 0; i < nrows; i++) {
        const struct row *w = &rows[i];
        double qw = med(w->q->wall, w->q->n), rw = med(w->r->wall, w->r->n);
        double qc = med(w->q->cpu, w->q->n), rc = med(w->r->cpu, w->r->n);
        double qv = w->use_cpu ? qc : qw, rv = w->use_cpu ? rc : rw;
        double ratio = qv > 0 ? rv / qv : 0;
        char qm[16], rm[16];
        const char *res = "-", *mem = "-";

        if (w->kind == T_SPEEDUP)
            res = ratio >= w->goal ? "PASS" : "MISS";
        else if (w->kind == T_TIME)
            res = qw <= w->goal ? "PASS" : "MISS";
        else if (w->kind == T_RSS)
            res = w->q->rss_kb <= w->r->rss_kb + (long)(QCOW2_DEFAULT_CACHE_BYTES >> 10) + 1024
                      ? "PASS"
                      : "MISS";
        if (w->mem_vs_qemu)
            mem = w->q->rss_kb <= w->r->rss_kb ? "ok" : "MISS";
        miss += !strcmp(res, "MISS") + !strcmp(mem, "MISS");
        printf("%-52s %8.3f %8.3f %7.2fx %8.3f %8.3f %10s %10s  %-30s %-6s %s\n", w->name, qw, rw,
               ratio, qc, rc, bu_fmt_kib(qm, sizeof(qm), w->q->rss_kb),
               bu_fmt_kib(rm, sizeof(rm), w->r->rss_kb), w->target, res, mem);
    }
    printf("%.*s\n", 170, line);
    printf("speedup = reference time / qsnap time (>1: qsnap faster); rows marked (cpu) compare "
           "user+system CPU time.\n");
    printf("times are medians; RSS is the largest peak over the runs; mem = qsnap peak RSS <= "
           "qemu-img's.\n");
    printf("page cache dropped before each timed run: %s\n",
           caches_dropped ? "yes" : "NO (not permitted: runs are warm)");
    printf("targets missed: %u\n", miss);
}

static void set_argv(struct spec *s, const char *label, const char *a0, ...)
{
    va_list ap;
    const char *a;
    unsigned n = 0;

    s->label = label;
    s->argv[n++] = (char *)(uintptr_t)a0;
    va_start(ap, a0);
    while ((a = va_arg(ap, const char *)) != NULL) {
        if (n + 1 >= sizeof(s->argv) / sizeof(s->argv[0]))
            bu_die("too many arguments");
        s->argv[n++] = (char *)(uintptr_t)a;
    }
    va_end(ap);
    s->argv[n] = NULL;
}

static int cmd_run(const char *dir)
{
    static struct meas m_s1[2], m_cp[1], m_s2[2], m_s3[4], m_s3s[1], m_s4[4], m_s5[3], m_s6[6],
        m_s7[3];
    static char chain_top[64];
    struct spec sp[4];
    unsigned slow = bu_runs(3), fast = bu_runs(5);
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);

    if (n <= 0)
        bu_die("readlink /proc/self/exe: %s", strerror(errno));
    self_path[n] = '\0';
    if (chdir(dir) < 0)
        bu_die("%s: %s", dir, strerror(errno));
    snprintf(chain_top, sizeof(chain_top), "p/chain/l%02d.qcow2", CHAIN_DEPTH);

    if (!want(1))
        goto s2;
    /* 1: commit into a raw base, and the floor: cp + sync of the same amount of data, release. */
    fprintf(stderr, "scenario 1: commit into a raw base (%u runs)\n", slow);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap commit -> raw", self_path, "op", "commit", "w/s1_top.qcow2", NULL);
    set_argv(&sp[1], "qemu-img commit -> raw", "qemu-img", "commit", "-q", "-f", "qcow2",
             "w/s1_top.qcow2", NULL);
    for (int i = 0; i < 2; i++) {
        sp[i].prep = "rm -f w/s1_base.raw w/s1_top.qcow2 && "
                     "cp --reflink=auto --sparse=always p/s1_base.raw p/s1_top.qcow2 w/";
        sp[i].cold = true;
    }
    sp[0].verify = "qemu-img compare -q -f raw -F raw w/s1_base.raw p/s1_flat.raw || "
                   "{ echo 'qsnap commit: wrong base content' >&2; exit 1; }";
    measure(sp, m_s1, 2, slow);
    memset(sp, 0, sizeof(sp));
    /*
     * The floor: copy the same bytes durably, then release the overlay's
     * blocks (a punch over the whole overlay, synced), which a commit that
     * empties the overlay cannot avoid either.
     */
    set_argv(&sp[0], "cp + sync + release overlay", "sh", "-c",
             "cp p/cp_src.bin w/cp_dst.bin && sync && "
             "fallocate -p -o 0 -l \"$(stat -c %s w/s1_top.qcow2)\" w/s1_top.qcow2 && sync",
             NULL);
    sp[0].prep = "rm -f w/cp_dst.bin w/s1_top.qcow2 && "
                 "cp --reflink=auto --sparse=always p/s1_top.qcow2 w/";
    sp[0].cold = true;
    measure(sp, m_cp, 1, slow);
    bu_sh("rm -f w/s1_base.raw w/s1_top.qcow2 w/cp_dst.bin");
    add_row("1 commit 512M scattered -> raw base [qemu-img]", &m_s1[0], &m_s1[1], T_NONE, 0,
            "- (information)", true);
    add_row("1 commit -> raw base [cp+sync+release: the floor]", &m_s1[0], &m_cp[0], T_SPEEDUP,
            1.0 / 1.15, ">= 0.87x (qsnap <= 1.15x floor)", false);

s2:
    if (!want(2))
        goto s3;
    /* 2: the same overlay into a qcow2 base. */
    fprintf(stderr, "scenario 2: commit into a qcow2 base (%u runs)\n", slow);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap commit -> qcow2", self_path, "op", "commit", "w/s2_top.qcow2", NULL);
    set_argv(&sp[1], "qemu-img commit -> qcow2", "qemu-img", "commit", "-q", "-f", "qcow2",
             "w/s2_top.qcow2", NULL);
    for (int i = 0; i < 2; i++) {
        sp[i].prep = "rm -f w/s2_base.qcow2 w/s2_top.qcow2 && "
                     "cp --reflink=auto --sparse=always p/s2_base.qcow2 p/s2_top.qcow2 w/";
        sp[i].cold = true;
    }
    sp[0].verify = "qemu-img check -q w/s2_base.qcow2 && "
                   "qemu-img compare -q -f qcow2 -F raw w/s2_base.qcow2 p/s1_flat.raw || "
                   "{ echo 'qsnap commit: wrong qcow2 base' >&2; exit 1; }";
    measure(sp, m_s2, 2, slow);
    bu_sh("rm -f w/s2_base.qcow2 w/s2_top.qcow2");
    add_row("2 commit 512M scattered -> qcow2 base [qemu-img]", &m_s2[0], &m_s2[1], T_NONE, 0,
            "- (information)", true);

s3:
    if (!want(3))
        goto s4;
    /* 3: convert the 64-deep chain. */
    fprintf(stderr, "scenario 3: convert a %d-deep chain (%u runs)\n", CHAIN_DEPTH, fast);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap convert -> raw", self_path, "op", "convert", "raw", chain_top,
             "w/out.raw", NULL);
    set_argv(&sp[1], "qemu-img convert -> raw", "qemu-img", "convert", "-f", "qcow2", "-O", "raw",
             chain_top, "w/out.raw", NULL);
    set_argv(&sp[2], "qsnap convert -> qcow2", self_path, "op", "convert", "qcow2", chain_top,
             "w/out.qcow2", NULL);
    set_argv(&sp[3], "qemu-img convert -> qcow2", "qemu-img", "convert", "-f", "qcow2", "-O",
             "qcow2", chain_top, "w/out.qcow2", NULL);
    for (int i = 0; i < 4; i++) {
        sp[i].prep = "rm -f w/out.raw w/out.qcow2";
        sp[i].cold = true;
    }
    sp[0].verify = "qemu-img compare -q -f raw -F qcow2 w/out.raw p/chain_flat.qcow2 || "
                   "{ echo 'qsnap convert: wrong raw output' >&2; exit 1; }";
    sp[2].verify = "qemu-img check -q w/out.qcow2 && "
                   "qemu-img compare -q w/out.qcow2 p/chain_flat.qcow2 || "
                   "{ echo 'qsnap convert: wrong qcow2 output' >&2; exit 1; }";
    measure(sp, m_s3, 4, fast);
    /* Neither convert flushes its target (qemu-img: cache=unsafe); this row adds a sync to qemu-img. */
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qemu-img convert -> raw + sync", "sh", "-c",
             "qemu-img convert -f qcow2 -O raw p/chain/l64.qcow2 w/out.raw && sync", NULL);
    sp[0].prep = "rm -f w/out.raw w/out.qcow2";
    sp[0].cold = true;
    measure(sp, m_s3s, 1, fast);
    bu_sh("rm -f w/out.raw w/out.qcow2");
    add_row("3 convert 64-deep chain -> raw [qemu-img]", &m_s3[0], &m_s3[1], T_SPEEDUP, 2.0,
            ">= 2.00x", true);
    add_row("3 convert -> raw [qemu-img + sync: both durable]", &m_s3[0], &m_s3s[0], T_NONE, 0,
            "- (information)", false);
    add_row("3 convert 64-deep chain -> qcow2 [qemu-img]", &m_s3[2], &m_s3[3], T_SPEEDUP, 2.0,
            ">= 2.00x", true);

s4:
    if (!want(4))
        goto s5;
    /* 4: read through the chain vs the flattened image (both ours, warm caches, CPU time). */
    fprintf(stderr, "scenario 4: read a %d-deep chain vs one layer, warm (%u runs)\n",
            CHAIN_DEPTH, fast);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap read 64-deep chain", self_path, "op", "read", chain_top, NULL);
    set_argv(&sp[1], "qsnap read flattened", self_path, "op", "read", "p/chain_flat.qcow2", NULL);
    set_argv(&sp[2], "qsnap random reads 64-deep", self_path, "op", "randread", chain_top, NULL);
    set_argv(&sp[3], "qsnap random reads flat", self_path, "op", "randread", "p/chain_flat.qcow2",
             NULL);
    /*
     * Warm, and warmed the same way for both: how the page cache was filled
     * (sequential reads or scattered ones, by whichever tool ran last) sets
     * the size of its folios, and that alone moves a read of 64 small files
     * by 30%. So drop everything first, then read every input front to back.
     */
    (void)bu_drop_caches();
    bu_sh("cat p/chain/* p/chain_flat.qcow2 > /dev/null");
    measure(sp, m_s4, 4, fast);
    add_row("4 read 64-deep chain (cpu) [qsnap, one layer]", &m_s4[0], &m_s4[1], T_SPEEDUP,
            1.0 / 1.5, ">= 0.67x (chain <= 1.5x flat)", false)
        ->use_cpu = true;
    add_row("4 100k random 4K reads, 64-deep (cpu) [one layer]", &m_s4[2], &m_s4[3], T_NONE, 0,
            "- (information)", false)
        ->use_cpu = true;

s5:
    if (!want(5))
        goto s6;
    /* 5: digest and compare of the scenario-1 images. */
    fprintf(stderr, "scenario 5: digest and compare (%u runs)\n", fast);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap digest", self_path, "op", "digest", "p/s1_top.qcow2", NULL);
    set_argv(&sp[1], "qsnap compare", self_path, "op", "compare", "p/s1_top.qcow2",
             "p/s1_flat.raw", NULL);
    set_argv(&sp[2], "qemu-img compare", "qemu-img", "compare", "-f", "qcow2", "-F", "raw",
             "p/s1_top.qcow2", "p/s1_flat.raw", NULL);
    for (int i = 0; i < 3; i++)
        sp[i].cold = true;
    measure(sp, m_s5, 3, fast);
    /* The digest reads one side of what compare reads: held to compare's goal. */
    add_row("5 digest overlay+raw base [qemu-img compare]", &m_s5[0], &m_s5[2], T_SPEEDUP, 4.0,
            ">= 4.00x", true);
    add_row("5 compare overlay vs raw copy [qemu-img compare]", &m_s5[1], &m_s5[2], T_SPEEDUP,
            4.0, ">= 4.00x", true);

s6:
    if (!want(6))
        goto s7;
    /* 6: memory on a 1 TiB sparse image vs a 1 GiB one. */
    fprintf(stderr, "scenario 6: 1 TiB vs 1 GiB sparse images (1 run for the 1 TiB digest)\n");
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap convert 1T -> raw", self_path, "op", "convert", "raw",
             "p/s6_1t.qcow2", "w/s6.raw", NULL);
    set_argv(&sp[1], "qemu-img convert 1T -> raw", "qemu-img", "convert", "-f", "qcow2", "-O",
             "raw", "p/s6_1t.qcow2", "w/s6.raw", NULL);
    set_argv(&sp[2], "qsnap convert 1G -> raw", self_path, "op", "convert", "raw",
             "p/s6_1g.qcow2", "w/s6.raw", NULL);
    set_argv(&sp[3], "qsnap digest 1G", self_path, "op", "digest", "p/s6_1g.qcow2", NULL);
    for (int i = 0; i < 4; i++)
        sp[i].prep = "rm -f w/s6.raw";
    measure(sp, m_s6, 4, fast);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap digest 1T", self_path, "op", "digest", "p/s6_1t.qcow2", NULL);
    measure(sp, &m_s6[4], 1, 1);
    bu_sh("rm -f w/s6.raw");
    add_row("6 convert 1 TiB sparse -> raw [qemu-img]", &m_s6[0], &m_s6[1], T_NONE, 0, "-", true);
    add_row("6 convert 1 TiB sparse -> raw [qsnap on 1 GiB]", &m_s6[0], &m_s6[2], T_RSS, 0,
            "RSS(1T) <= RSS(1G)+L2 cache", false);
    add_row("6 digest 1 TiB sparse [qsnap on 1 GiB]", &m_s6[4], &m_s6[3], T_RSS, 0,
            "RSS(1T) <= RSS(1G)+L2 cache", false);

s7:
    if (!want(7))
        goto done;
    /* 7: the digest costs what the image holds; no more than hashing every byte when full. */
    fprintf(stderr, "scenario 7: digest of 1 TiB with 1 GiB of data; of 1 GiB fully allocated (%u runs)\n",
            fast);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap digest 1T sparse", self_path, "op", "digest", "p/s7_1t.qcow2", NULL);
    set_argv(&sp[1], "qsnap digest 1G full", self_path, "op", "digest", "p/s7_full.raw", NULL);
    set_argv(&sp[2], "xxh3 of every byte, 1G full", self_path, "op", "xxh3all", "p/s7_full.raw",
             NULL);
    for (int i = 0; i < 3; i++)
        sp[i].cold = true;
    measure(sp, m_s7, 3, fast);
    add_row("7 digest 1 TiB, 1 GiB data [xxh3 of the 1 GiB full]", &m_s7[0], &m_s7[2], T_TIME,
            1.0, "qsnap < 1.00 s", false);
    add_row("7 digest 1 GiB fully allocated [xxh3 every byte]", &m_s7[1], &m_s7[2], T_SPEEDUP,
            0.95, ">= 0.95x (no slower)", false);
done:

    print_table();
    if (!caches_dropped)
        fprintf(stderr, "bench: dropping the page cache failed %u times\n", cache_drop_failures);
    return 0;
}

/*
 * Scenario 8, on a file system that shares blocks (XFS with reflink, btrfs),
 * mounted at dir: the scenario-1 and -2 commits and a convert of the
 * overlay to raw, against qemu-img and against cp --reflink=always of the
 * overlay (what cloning the whole file costs there).
 */
static int cmd_fs(const char *fsname, const char *dir)
{
    static struct meas m_c[2], m_cp[1], m_q[2], m_v[2];
    struct sizes z = sizes_get();
    struct spec sp[4];
    unsigned slow = bu_runs(3);
    char name[64];
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);

    if (n <= 0)
        bu_die("readlink /proc/self/exe: %s", strerror(errno));
    self_path[n] = '\0';
    if (chdir(dir) < 0)
        bu_die("%s: %s", dir, strerror(errno));
    bu_sh("rm -rf p w && mkdir -p p w");
    step("scenario 8 on %s: raw and qcow2 bases, overlays of %" PRIu64 " scattered clusters",
         fsname, z.s1_clusters);
    make_raw_base("p/s1_base.raw", z.s1_vsize, z.s1_base_data, BU_SEED + 1);
    make_overlay("p/s1_top.qcow2", z.s1_vsize, "s1_base.raw", "raw", z.s1_clusters, BU_SEED + 2);
    make_qcow2_base("p/s2_base.qcow2", z.s1_vsize, z.s1_base_data, BU_SEED + 1);
    make_overlay("p/s2_top.qcow2", z.s1_vsize, "s2_base.qcow2", "qcow2", z.s1_clusters,
                 BU_SEED + 2);
    bu_sh("qemu-img convert -f qcow2 -O raw p/s1_top.qcow2 p/s1_flat.raw && "
          "qemu-img check -q p/s1_top.qcow2 && qemu-img check -q p/s2_top.qcow2 && "
          "qemu-img check -q p/s2_base.qcow2 && sync");
    step("setup done");

    fprintf(stderr, "scenario 8 on %s: commits and convert (%u runs)\n", fsname, slow);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap commit -> raw", self_path, "op", "commit", "w/s1_top.qcow2", NULL);
    set_argv(&sp[1], "qemu-img commit -> raw", "qemu-img", "commit", "-q", "-f", "qcow2",
             "w/s1_top.qcow2", NULL);
    for (int i = 0; i < 2; i++) {
        sp[i].prep = "rm -f w/* && cp --reflink=never --sparse=always p/s1_base.raw "
                     "p/s1_top.qcow2 w/ && sync";
        sp[i].cold = true;
    }
    sp[0].verify = "qemu-img compare -q -f raw -F raw w/s1_base.raw p/s1_flat.raw || "
                   "{ echo 'qsnap commit: wrong base content' >&2; exit 1; }";
    measure(sp, m_c, 2, slow);
    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "cp --reflink=always overlay", "cp", "--reflink=always", "p/s1_top.qcow2",
             "w/clone.qcow2", NULL);
    sp[0].prep = "rm -f w/*";
    sp[0].cold = true;
    measure(sp, m_cp, 1, slow);

    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap commit -> qcow2", self_path, "op", "commit", "w/s2_top.qcow2", NULL);
    set_argv(&sp[1], "qemu-img commit -> qcow2", "qemu-img", "commit", "-q", "-f", "qcow2",
             "w/s2_top.qcow2", NULL);
    for (int i = 0; i < 2; i++) {
        sp[i].prep = "rm -f w/* && cp --reflink=never --sparse=always p/s2_base.qcow2 "
                     "p/s2_top.qcow2 w/ && sync";
        sp[i].cold = true;
    }
    sp[0].verify = "qemu-img check -q w/s2_base.qcow2 && "
                   "qemu-img compare -q -f qcow2 -F raw w/s2_base.qcow2 p/s1_flat.raw || "
                   "{ echo 'qsnap commit: wrong qcow2 base' >&2; exit 1; }";
    measure(sp, m_q, 2, slow);

    memset(sp, 0, sizeof(sp));
    set_argv(&sp[0], "qsnap convert -> raw", self_path, "op", "convert", "raw", "p/s1_top.qcow2",
             "w/out.raw", NULL);
    set_argv(&sp[1], "qemu-img convert -> raw", "qemu-img", "convert", "-f", "qcow2", "-O", "raw",
             "p/s1_top.qcow2", "w/out.raw", NULL);
    for (int i = 0; i < 2; i++) {
        sp[i].prep = "rm -f w/*";
        sp[i].cold = true;
    }
    sp[0].verify = "qemu-img compare -q -f raw -F raw w/out.raw p/s1_flat.raw || "
                   "{ echo 'qsnap convert: wrong raw output' >&2; exit 1; }";
    measure(sp, m_v, 2, slow);
    bu_sh("rm -rf p w");

    snprintf(name, sizeof(name), "8 %s commit 512M -> raw base [qemu-img]", fsname);
    add_row(name, &m_c[0], &m_c[1], T_SPEEDUP, 10.0, ">= 10.00x", true);
    snprintf(name, sizeof(name), "8 %s commit -> raw [cp --reflink=always top]", fsname);
    add_row(name, &m_c[0], &m_cp[0], T_NONE, 0, "- (information)", false);
    snprintf(name, sizeof(name), "8 %s commit 512M -> qcow2 base [qemu-img]", fsname);
    add_row(name, &m_q[0], &m_q[1], T_SPEEDUP, 10.0, ">= 10.00x", true);
    snprintf(name, sizeof(name), "8 %s convert overlay+raw -> raw [qemu-img]", fsname);
    add_row(name, &m_v[0], &m_v[1], T_SPEEDUP, 10.0, ">= 10.00x", true);
    print_table();
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "setup"))
        return cmd_setup(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "run"))
        return cmd_run(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "fs"))
        return cmd_fs(argv[2], argv[3]);
    if (argc >= 3 && !strcmp(argv[1], "op"))
        return cmd_op(argc - 2, argv + 2);
    fprintf(stderr, "usage: %s setup DIR | run DIR | fs NAME DIR | op OP ARGS...\n", argv[0]);
    return 2;
}
