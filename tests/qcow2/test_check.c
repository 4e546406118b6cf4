/*
 * Tests for qcow2/check.c: qcow2_image_check() against qemu-img check 7.2.
 *
 * - Clean images made by qemu-img over an option matrix (v2/v3, 512 B to
 *   2 MiB clusters, refcount 1..64 bits, extended L2, zstd, compressed data,
 *   internal snapshots, a persistent bitmap, preallocation) check clean, with
 *   the figures of `qemu-img check --output=json`.
 * - Images written by libqcow2 itself check clean (and qemu agrees).
 * - Poked images (a leaked cluster, a too-low refcount, wrong COPIED flags,
 *   an L2 entry past the end of the file): the counters and report lines
 *   equal qemu's; after repair (-r leaks, -r all) the fixed counters equal
 *   qemu's, qemu-img check gives the same verdict as on qemu's own repair,
 *   and the guest content is unchanged.
 * - A dirty lazy-refcounts image is repaired when opened read-write.
 * - Fault injection over repair: the call fails cleanly, and a reopened
 *   image has at most leaks. Hostile bytes never crash the check.
 *
 * Tests that need qemu-img are skipped when it is missing. Images live in a
 * fresh directory under /tmp, removed at the end.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io_fault.h"
#include "memfs.h"
#include "qcow2_int.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/qcow2-check-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        cr_log_warn("could not remove %s", dir);
}

TestSuite(check, .init = setup, .fini = teardown, .timeout = 300);

/* ---- helpers -------------------------------------------------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Run a shell command (output discarded); its exit status, or -1. */
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    strncat(cmd, " >/dev/null 2>&1", sizeof(cmd) - strlen(cmd) - 1);
    st = system(cmd);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static bool have_qemu(void)
{
    return sh("qemu-img --version") == 0 && sh("qemu-io --version") == 0;
}

/* dir/name in one of 64 rotating buffers (callers keep a path for a few calls only). */
static const char *path_of(const char *name)
{
    static char buf[64][160];
    static unsigned n;
    char *p = buf[n++ % 64];

    snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
    return p;
}

/* qemu-img check --output=json [-r fix] on path, parsed into r (absent keys are 0). */
static int qemu_check(const char *path, const char *fix, qcow2_check_result *r)
{
    static const struct {
        const char *key;
        size_t off;
    } keys[] = {
        {"\"check-errors\":", offsetof(qcow2_check_result, check_errors)},
        {"\"corruptions\":", offsetof(qcow2_check_result, corruptions)},
        {"\"leaks\":", offsetof(qcow2_check_result, leaks)},
        {"\"corruptions-fixed\":", offsetof(qcow2_check_result, corruptions_fixed)},
        {"\"leaks-fixed\":", offsetof(qcow2_check_result, leaks_fixed)},
        {"\"image-end-offset\":", offsetof(qcow2_check_result, image_end_offset)},
        {"\"total-clusters\":", offsetof(qcow2_check_result, total_clusters)},
        {"\"allocated-clusters\":", offsetof(qcow2_check_result, allocated_clusters)},
        {"\"fragmented-clusters\":", offsetof(qcow2_check_result, fragmented_clusters)},
        {"\"compressed-clusters\":", offsetof(qcow2_check_result, compressed_clusters)},
    };
    char cmd[512], out[8192];
    size_t n;
    FILE *p;
    int st;

    snprintf(cmd, sizeof(cmd), "qemu-img check --output=json %s%s '%s' 2>/dev/null",
             fix ? "-r " : "", fix ? fix : "", path);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    st = pclose(p);
    memset(r, 0, sizeof(*r));
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *k = strstr(out, keys[i].key);
        if (k)
            *(uint64_t *)(void *)((char *)r + keys[i].off) =
                strtoull(k + strlen(keys[i].key), NULL, 10);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Report lines collected from a check. */
struct lines {
    char text[16384];
    unsigned n;
};

static void collect(const char *line, void *payload)
{
    struct lines *l = payload;

    strncat(l->text, line, sizeof(l->text) - strlen(l->text) - 2);
    strcat(l->text, "\n");
    l->n++;
}

/* Our check of a file (read-write when fixing); QCOW2_OPEN_CHECK keeps open from repairing. */
static int our_check(const char *path, unsigned fix, qcow2_check_result *r, struct lines *l)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    int rc;

    o.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_CHECK | (fix ? QCOW2_OPEN_RDWR : 0);
    rc = qcow2_image_open(&img, path, &o);
    cr_assert_eq(rc, 0, "open %s: %s", path, qcow2_error_last()->message);
    memset(r, 0, sizeof(*r));
    if (l) {
        memset(l, 0, sizeof(*l));
        r->report = collect;
        r->payload = l;
    }
    rc = qcow2_image_check(img, fix, r);
    qcow2_image_close(img);
    return rc;
}

#define ASSERT_FIELD(a, b, f, what)                                                                \
    cr_assert_eq((a)->f, (b)->f, "%s: " #f " ours %" PRIu64 " qemu %" PRIu64, what,           \
                 (uint64_t)(a)->f, (uint64_t)(b)->f)

static void assert_same_figures(const qcow2_check_result *ours, const qcow2_check_result *q,
                                const char *what)
{
    ASSERT_FIELD(ours, q, check_errors, what);
    ASSERT_FIELD(ours, q, corruptions, what);
    ASSERT_FIELD(ours, q, leaks, what);
    ASSERT_FIELD(ours, q, image_end_offset, what);
    ASSERT_FIELD(ours, q, total_clusters, what);
    ASSERT_FIELD(ours, q, allocated_clusters, what);
    ASSERT_FIELD(ours, q, fragmented_clusters, what);
    ASSERT_FIELD(ours, q, compressed_clusters, what);
}

/* Check path with both and require the same figures; returns ours. */
static qcow2_check_result compare_with_qemu(const char *path)
{
    qcow2_check_result ours, q;

    qemu_check(path, NULL, &q);
    cr_assert_eq(our_check(path, 0, &ours, NULL), 0, "%s: %s", path, qcow2_error_last()->message);
    assert_same_figures(&ours, &q, path);
    return ours;
}

/* ---- file pokes (16-bit refcounts, first refcount block) ------------------- */

struct file {
    uint8_t *d;
    size_t len;
    uint64_t cs, l1_off;
};

static struct file file_load(const char *path)
{
    struct file f;
    FILE *fp = fopen(path, "rb");

    cr_assert_not_null(fp);
    fseek(fp, 0, SEEK_END);
    f.len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f.d = malloc(f.len + (4u << 20));
    cr_assert_not_null(f.d);
    cr_assert_eq(fread(f.d, 1, f.len, fp), f.len);
    fclose(fp);
    f.cs = 1ull << qcow2__be32(f.d + 20);
    f.l1_off = qcow2__be64(f.d + 40);
    return f;
}

static void file_save(struct file *f, const char *path)
{
    FILE *fp = fopen(path, "wb");

    cr_assert_not_null(fp);
    cr_assert_eq(fwrite(f->d, 1, f->len, fp), f->len);
    fclose(fp);
    free(f->d);
}

/* Byte position of cluster c's 16-bit refcount (its group must have a block). */
static uint64_t rc_pos(const struct file *f, uint64_t c)
{
    uint64_t per = f->cs / 2, rt = qcow2__be64(f->d + 48);
    uint64_t rb = qcow2__be64(f->d + rt + (c / per) * 8) & QCOW2_REFT_OFFSET_MASK;

    cr_assert_neq(rb, 0, "no refcount block for cluster %" PRIu64, c);
    return rb + (c % per) * 2;
}

static uint16_t rc_get(const struct file *f, uint64_t c)
{
    return qcow2__be16(f->d + rc_pos(f, c));
}

static void rc_set(struct file *f, uint64_t c, uint16_t v)
{
    qcow2__put_be16(f->d + rc_pos(f, c), v);
}

/* L2 table of the first L1 entry, and the offset of its entry i. */
static uint64_t l2e_pos(const struct file *f, uint64_t i)
{
    return (qcow2__be64(f->d + f->l1_off) & QCOW2_L1E_OFFSET_MASK) + i * 8;
}

/* A 16 MiB image with 256 KiB of data at 0 (four 64 KiB clusters). */
static const char *make_small(const char *name, const char *opts)
{
    const char *p = path_of(name);

    cr_assert_eq(sh("qemu-img create -q -f qcow2 %s '%s' 16M", opts, p), 0);
    cr_assert_eq(sh("qemu-io -c 'write -P 1 0 256k' -c 'write -P 2 1M 64k' '%s'", p), 0);
    return p;
}

/* ---- clean images ---------------------------------------------------------- */

Test(check, qemu_images_are_clean_with_qemu_figures)
{
    static const char *const matrix[] = {
        "-o compat=0.10",
        "-o compat=0.10,cluster_size=512",
        "-o cluster_size=512,refcount_bits=1",
        "-o cluster_size=4k,refcount_bits=2",
        "-o cluster_size=16k,refcount_bits=4,compression_type=zstd",
        "-o cluster_size=64k,refcount_bits=8",
        "-o cluster_size=64k,refcount_bits=32,extended_l2=on",
        "-o cluster_size=2M,refcount_bits=64",
        "-o cluster_size=32k,extended_l2=on,compression_type=zstd",
        "-o lazy_refcounts=on",
    };

    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    for (size_t i = 0; i < sizeof(matrix) / sizeof(matrix[0]); i++) {
        char name[32];
        const char *p;

        snprintf(name, sizeof(name), "m%zu.qcow2", i);
        p = path_of(name);
        cr_assert_eq(sh("qemu-img create -q -f qcow2 %s '%s' 64M", matrix[i], p), 0, "%s",
                     matrix[i]);
        cr_assert_eq(sh("qemu-io -c 'write -P 1 0 3M' -c 'write -P 2 10M 100k' -c 'write -z 20M 1M'"
                        " -c 'write -c -P 3 32M 2M' -c 'write -P 4 5M 7k' -c 'write -P 5 1M 4k'"
                        " '%s'",
                        p),
                     0);
        compare_with_qemu(p);
        /* Internal snapshots: shared clusters, refcount 2, COPIED clear. */
        /* (qemu cannot snapshot shared compressed clusters with narrow refcounts.) */
        if (!strstr(matrix[i], "refcount_bits=1") && !strstr(matrix[i], "refcount_bits=2") &&
            !strstr(matrix[i], "refcount_bits=4")) {
            cr_assert_eq(sh("qemu-img snapshot -c s1 '%s'", p), 0);
            cr_assert_eq(sh("qemu-io -c 'write -P 9 0 64k' -c 'write -c -P 7 40M 2M' '%s'", p), 0);
            cr_assert_eq(sh("qemu-img snapshot -c s2 '%s'", p), 0);
            compare_with_qemu(p);
        }
        /* A persistent bitmap with data clusters (v3 only). */
        if (!strstr(matrix[i], "compat=0.10")) {
            cr_assert_eq(sh("qemu-img bitmap --add '%s' bm0", p), 0);
            cr_assert_eq(sh("qemu-io -c 'write -P 3 50M 1M' '%s'", p), 0);
            compare_with_qemu(p);
        }
    }
}

Test(check, qemu_compressed_and_preallocated_images_are_clean)
{
    const char *src = path_of("src.qcow2"), *c = path_of("c.qcow2");
    const char *pm = path_of("pm.qcow2"), *pf = path_of("pf.qcow2");
    qcow2_check_result r;

    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(sh("qemu-img create -q -f qcow2 '%s' 8M", src), 0);
    cr_assert_eq(sh("qemu-io -c 'write -P 1 0 3M' -c 'write -P 2 5M 1M' '%s'", src), 0);
    cr_assert_eq(sh("qemu-img convert -c -O qcow2 '%s' '%s'", src, c), 0);
    r = compare_with_qemu(c);
    cr_assert_gt(r.compressed_clusters, 0);
    cr_assert_eq(r.fragmented_clusters, r.compressed_clusters);
    cr_assert_eq(sh("qemu-img create -q -f qcow2 -o preallocation=metadata '%s' 10M", pm), 0);
    r = compare_with_qemu(pm);
    cr_assert_eq(r.allocated_clusters, r.total_clusters);
    cr_assert_eq(sh("qemu-img create -q -f qcow2 -o preallocation=falloc,extended_l2=on '%s' 10M",
                    pf),
                 0);
    compare_with_qemu(pf);
}

/* Write a pattern through the library (posix backend). */
static void lib_write(qcow2_image *img, uint64_t off, size_t len, int pattern)
{
    uint8_t *buf = malloc(len);

    cr_assert_not_null(buf);
    memset(buf, pattern, len);
    cr_assert_eq(qcow2_image_write(img, buf, len, off), 0, "%s", qcow2_error_last()->message);
    free(buf);
}

Test(check, library_images_are_clean)
{
    static const struct {
        uint32_t version, cluster_size, refcount_bits;
        bool extl2;
    } matrix[] = {
        {2, 65536, 16, false}, {3, 512, 1, false},   {3, 4096, 64, false},
        {3, 65536, 16, true},  {3, 2u << 20, 8, false},
    };

    for (size_t i = 0; i < sizeof(matrix) / sizeof(matrix[0]); i++) {
        qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
        qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
        qcow2_check_result r;
        qcow2_image *img;
        char name[32];
        const char *p;
        uint8_t *cbuf;

        snprintf(name, sizeof(name), "lib%zu.qcow2", i);
        p = path_of(name);
        co.size = 64ull << 20;
        co.qcow2_version = matrix[i].version;
        co.cluster_size = matrix[i].cluster_size;
        co.refcount_bits = matrix[i].refcount_bits;
        co.extended_l2 = matrix[i].extl2;
        cr_assert_eq(qcow2_image_create(p, &co), 0, "%s", qcow2_error_last()->message);
        o.flags = QCOW2_OPEN_RDWR;
        cr_assert_eq(qcow2_image_open(&img, p, &o), 0);
        lib_write(img, 0, 3u << 20, 1);
        lib_write(img, (10u << 20) + 777, 100000, 2);
        cr_assert_eq(qcow2_image_write_zeroes(img, 20u << 20, 1u << 20, 0), 0);
        cr_assert_eq(qcow2_image_discard(img, 0, 1u << 20), 0);
        cbuf = calloc(1, 4u << 20);
        cr_assert_not_null(cbuf);
        memset(cbuf, 'x', 100);
        cr_assert_eq(qcow2_image_write_compressed(img, cbuf, 4u << 20, 32u << 20), 0, "%s",
                     qcow2_error_last()->message);
        free(cbuf);
        /* Mid-session check sees what the handle holds (it flushes first). */
        memset(&r, 0, sizeof(r));
        cr_assert_eq(qcow2_image_check(img, 0, &r), 0);
        cr_assert_eq(r.corruptions + r.leaks + r.check_errors, 0, "%s mid-session", name);
        qcow2_image_close(img);
        cr_assert_eq(our_check(p, 0, &r, NULL), 0);
        cr_assert_eq(r.corruptions + r.leaks + r.check_errors, 0, "%s", name);
        if (have_qemu())
            compare_with_qemu(p);
    }
}

/* ---- poked images ------------------------------------------------------------ */

enum poke { POKE_LEAK, POKE_FREE_LEAK, POKE_LOW, POKE_COPIED, POKE_L1_COPIED, POKE_PAST_EOF };

static void poke(const char *p, enum poke kind)
{
    struct file f = file_load(p);
    uint64_t pos = l2e_pos(&f, 0);
    uint64_t e0 = qcow2__be64(f.d + pos), host = e0 & QCOW2_L2E_OFFSET_MASK;
    uint64_t l1e = qcow2__be64(f.d + f.l1_off);
    uint64_t nb = f.len / f.cs;

    switch (kind) {
    case POKE_LEAK: /* refcount 2 for a cluster referenced once (and COPIED set) */
        rc_set(&f, host / f.cs, (uint16_t)(rc_get(&f, host / f.cs) + 1));
        break;
    case POKE_FREE_LEAK: /* three unreferenced clusters with refcount 1 */
        memset(f.d + f.len, 0, 3 * f.cs);
        f.len += 3 * f.cs;
        for (uint64_t c = nb; c < nb + 3; c++)
            rc_set(&f, c, 1);
        break;
    case POKE_LOW:
        rc_set(&f, host / f.cs, 0);
        break;
    case POKE_COPIED:
        qcow2__put_be64(f.d + pos, e0 & ~QCOW2_OFLAG_COPIED);
        break;
    case POKE_L1_COPIED:
        qcow2__put_be64(f.d + f.l1_off, l1e & ~QCOW2_OFLAG_COPIED);
        break;
    case POKE_PAST_EOF:
        qcow2__put_be64(f.d + l2e_pos(&f, 1), QCOW2_OFLAG_COPIED | ((nb + 10) * f.cs));
        break;
    }
    file_save(&f, p);
}

/* Our check lines must equal qemu-img check's problem lines (its text output). */
static void assert_same_lines(const char *path, const struct lines *l)
{
    char cmd[512], line[512];
    struct lines q;
    FILE *p;

    memset(&q, 0, sizeof(q));
    snprintf(cmd, sizeof(cmd), "qemu-img check '%s' 2>&1", path);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    while (fgets(line, sizeof(line), p)) {
        if (!strncmp(line, "ERROR", 5) || !strncmp(line, "Leaked cluster", 14)) {
            line[strcspn(line, "\n")] = '\0';
            collect(line, &q);
        }
    }
    pclose(p);
    cr_assert_str_eq(l->text, q.text);
}

Test(check, poked_images_match_qemu_and_repair)
{
    static const struct {
        enum poke kind;
        const char *name;
        uint64_t corruptions, leaks;
    } cases[] = {
        {POKE_LEAK, "leak", 1, 1},           {POKE_FREE_LEAK, "free-leak", 0, 3},
        {POKE_LOW, "low", 2, 0},             {POKE_COPIED, "copied", 1, 0},
        {POKE_L1_COPIED, "l1-copied", 1, 0}, {POKE_PAST_EOF, "past-eof", 2, 1},
    };
    static const char *const modes[] = {"leaks", "all"};

    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *orig = make_small("orig.qcow2", "");
        qcow2_check_result ours;
        struct lines l;

        poke(orig, cases[i].kind);
        ours = compare_with_qemu(orig);
        cr_assert_eq(ours.corruptions, cases[i].corruptions, "%s", cases[i].name);
        cr_assert_eq(ours.leaks, cases[i].leaks, "%s", cases[i].name);
        cr_assert_eq(our_check(orig, 0, &ours, &l), 0);
        assert_same_lines(orig, &l);

        for (size_t m = 0; m < 2; m++) {
            const char *qp = path_of("q.qcow2"), *op = path_of("o.qcow2");
            unsigned fix = m ? QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS
                             : QCOW2_CHECK_FIX_LEAKS;
            qcow2_check_result q, after_q, after_o;
            int st_q, st_o;

            cr_assert_eq(sh("cp '%s' '%s' && cp '%s' '%s'", orig, qp, orig, op), 0);
            st_q = qemu_check(qp, modes[m], &q);
            cr_assert_eq(our_check(op, fix, &ours, NULL), 0, "%s -r %s: %s", cases[i].name,
                         modes[m], qcow2_error_last()->message);
            /* qemu refuses -r leaks when a refcount is 0 ("need to rebuild"); we just report. */
            if (!(cases[i].kind == POKE_LOW && m == 0)) {
                ASSERT_FIELD(&ours, &q, leaks_fixed, cases[i].name);
                ASSERT_FIELD(&ours, &q, corruptions_fixed, cases[i].name);
                ASSERT_FIELD(&ours, &q, corruptions, cases[i].name);
                ASSERT_FIELD(&ours, &q, leaks, cases[i].name);
            }
            st_q = qemu_check(qp, NULL, &after_q);
            st_o = qemu_check(op, NULL, &after_o);
            cr_assert_eq(st_o, st_q, "%s -r %s: qemu-img check after repair: ours %d qemu %d",
                         cases[i].name, modes[m], st_o, st_q);
            /* qemu rebuilds the refcount structure (at the end of the file) for a zero refcount. */
            if (cases[i].kind == POKE_LOW)
                after_o.image_end_offset = after_q.image_end_offset;
            assert_same_figures(&after_o, &after_q, cases[i].name);
            /* The repair never changes what the guest reads. */
            if (cases[i].kind != POKE_PAST_EOF)
                cr_assert_eq(sh("qemu-img compare -q '%s' '%s'", orig, op), 0, "%s -r %s",
                             cases[i].name, modes[m]);
        }
    }
}

Test(check, corrupt_bit_is_cleared_by_a_full_repair)
{
    const char *p;
    qcow2_check_result r;
    qcow2_image *img;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;

    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    p = make_small("corrupt.qcow2", "");
    poke(p, POKE_COPIED);
    {
        struct file f = file_load(p);
        qcow2__put_be64(f.d + 72, qcow2__be64(f.d + 72) | QCOW2_INCOMPAT_CORRUPT);
        file_save(&f, p);
    }
    /* Writes are refused, repair is not. */
    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(qcow2_image_open(&img, p, &o), 0);
    cr_assert_eq(qcow2_image_write(img, "x", 1, 0), QCOW2_EREADONLY);
    memset(&r, 0, sizeof(r));
    cr_assert_eq(qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &r), 0);
    cr_assert_eq(r.corruptions_fixed, 1);
    cr_assert_eq(r.corruptions, 0);
    cr_assert_eq(qcow2_image_write(img, "x", 1, 0), 0, "%s", qcow2_error_last()->message);
    qcow2_image_close(img);
    cr_assert_eq(sh("qemu-img check '%s'", p), 0);
    cr_assert_eq(sh("qemu-img info '%s' | grep -q 'corrupt: false'", p), 0);
}

Test(check, refuses_repair_read_only_and_raw)
{
    qcow2_io *io;
    qcow2_image *img;
    qcow2_check_result r;
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    cr_assert_eq(qcow2_io_mem_new(&io, NULL, 0), 0);
    co.size = 1 << 20;
    cr_assert_eq(qcow2_image_create_io(io, "ro.qcow2", &co), 0);
    {
        size_t len;
        const uint8_t *d = qcow2_io_mem_data(io, &len);
        qcow2_io *io2;
        cr_assert_eq(qcow2_io_mem_new(&io2, d, len), 0);
        cr_assert_eq(qcow2_image_open_io(&img, io2, "ro.qcow2", NULL), 0);
    }
    qcow2_io_close(io);
    memset(&r, 0, sizeof(r));
    cr_assert_eq(qcow2_image_check(img, 0, &r), 0);
    cr_assert_eq(r.corruptions + r.leaks, 0);
    cr_assert_eq(qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS, &r), QCOW2_EREADONLY);
    qcow2_image_close(img);

    cr_assert_eq(qcow2_io_mem_new(&io, "rawbytes", 8), 0);
    cr_assert_eq(qcow2_image_open_io(&img, io, "x.raw", NULL), 0);
    cr_assert_eq(qcow2_image_check(img, 0, &r), QCOW2_EUNSUPPORTED);
    qcow2_image_close(img);
}

/* ---- lazy refcounts ------------------------------------------------------------ */

Test(check, dirty_lazy_refcounts_image_is_repaired_on_rw_open)
{
    memfs *fs = memfs_new();
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_check_result r;
    qcow2_image *img;
    qcow2_io *io;
    uint8_t *copy, buf[4096];
    struct lines lines;
    size_t len;
    const uint8_t *d;

    cr_assert_not_null(fs);
    co.size = 16 << 20;
    co.lazy_refcounts = true;
    co.open_fn = memfs_open;
    co.open_payload = fs;
    cr_assert_eq(memfs_open(&io, "/m/lazy.qcow2", QCOW2_IO_CREATE | QCOW2_IO_RDWR, fs), 0);
    cr_assert_eq(qcow2_image_create_io(io, "/m/lazy.qcow2", &co), 0,
                 "%s", qcow2_error_last()->message);
    qcow2_io_close(io);
    o.flags = QCOW2_OPEN_RDWR;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(memfs_open(&io, "/m/lazy.qcow2", QCOW2_IO_RDWR, fs), 0);
    cr_assert_eq(qcow2_image_open_io(&img, io, "/m/lazy.qcow2", &o), 0);
    memset(buf, 0xab, sizeof(buf));
    for (uint64_t off = 0; off < (8u << 20); off += 1u << 20)
        cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), off), 0);
    cr_assert_eq(qcow2_image_flush(img), 0);
    /* "Crash" here: take the bytes before the clean close clears the dirty bit. */
    d = memfs_get(fs, "/m/lazy.qcow2", &len);
    copy = malloc(len + 65536);
    cr_assert_not_null(copy);
    memcpy(copy, d, len);
    qcow2_image_close(img);
    cr_assert(qcow2__be64(copy + 72) & QCOW2_INCOMPAT_DIRTY);
    {
        /* Skew refcounts as lazy refcounts allow: one too high, one cluster leaked past the end. */
        uint64_t rb = qcow2__be64(copy + qcow2__be64(copy + 48));
        uint64_t l1 = qcow2__be64(copy + 40), l2 = qcow2__be64(copy + l1) & QCOW2_L1E_OFFSET_MASK;
        uint64_t host = qcow2__be64(copy + l2) & QCOW2_L2E_OFFSET_MASK;
        qcow2__put_be16(copy + rb + (host >> 16) * 2, 0);
        memset(copy + len, 0, 65536);
        qcow2__put_be16(copy + rb + (len >> 16) * 2, 1);
        len += 65536;
    }
    cr_assert_eq(memfs_put(fs, "/m/crashed.qcow2", copy, len), 0);
    free(copy);

    /* Opened read-only: nothing is repaired. */
    o.flags = 0;
    cr_assert_eq(memfs_open(&io, "/m/crashed.qcow2", 0, fs), 0);
    cr_assert_eq(qcow2_image_open_io(&img, io, "/m/crashed.qcow2", &o), 0);
    memset(&r, 0, sizeof(r));
    cr_assert_eq(qcow2_image_check(img, 0, &r), 0);
    cr_assert_eq(r.leaks, 1);
    cr_assert_geq(r.corruptions, 1);
    qcow2_image_close(img);

    /* Opened read-write: repaired and marked clean before anything else. */
    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(memfs_open(&io, "/m/crashed.qcow2", QCOW2_IO_RDWR, fs), 0);
    cr_assert_eq(qcow2_image_open_io(&img, io, "/m/crashed.qcow2", &o), 0, "%s",
                 qcow2_error_last()->message);
    memset(&r, 0, sizeof(r));
    memset(&lines, 0, sizeof(lines));
    r.report = collect;
    r.payload = &lines;
    cr_assert_eq(qcow2_image_check(img, 0, &r), 0);
    cr_assert_eq(r.corruptions + r.leaks + r.check_errors, 0, "%s", lines.text);
    cr_assert_eq(qcow2_image_read(img, buf, sizeof(buf), 3u << 20), 0);
    cr_assert_eq(buf[0], 0xab);
    cr_assert_eq(buf[4095], 0xab);
    qcow2_image_close(img);
    d = memfs_get(fs, "/m/crashed.qcow2", &len);
    cr_assert_eq(qcow2__be64(d + 72) & QCOW2_INCOMPAT_DIRTY, 0);
    if (have_qemu()) {
        const char *p = path_of("crashed.qcow2");
        FILE *fp = fopen(p, "wb");
        cr_assert_not_null(fp);
        cr_assert_eq(fwrite(d, 1, len, fp), len);
        fclose(fp);
        cr_assert_eq(sh("qemu-img check '%s'", p), 0);
    }
    memfs_free(fs);
}

/* ---- fault injection and hostile bytes ------------------------------------------ */

/* The memfs handle under the current io_fault wrapper (the wrapper does not own it). */
static qcow2_io *inner;

/* Open name in fs through io_fault f (RW, no auto-repair); NULL when open failed. */
static qcow2_image *open_faulty(memfs *fs, const char *name, io_fault **f)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;

    cr_assert_eq(memfs_open(&inner, name, QCOW2_IO_RDWR, fs), 0);
    *f = io_fault_new(inner);
    cr_assert_not_null(*f);
    o.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_CHECK | QCOW2_OPEN_NO_LOCK;
    if (qcow2_image_open_io(&img, io_fault_io(*f), name, &o) != 0)
        img = NULL;
    return img;
}

static void close_faulty(qcow2_image *img, io_fault *f)
{
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
    inner = NULL;
}

Test(check, repair_fault_sweep_leaves_at_most_leaks)
{
    const char *p;
    struct file f;
    memfs *fs = memfs_new();
    uint64_t n;
    bool done = false;

    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    /* Leaks spread over two refcount groups of a 512-byte-cluster image. */
    p = path_of("sweep.qcow2");
    cr_assert_eq(sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 4M", p), 0);
    cr_assert_eq(sh("qemu-io -c 'write -P 1 0 200k' -c 'write -P 2 1M 64k' '%s'", p), 0);
    f = file_load(p);
    {
        uint64_t nb = f.len / f.cs;
        memset(f.d + f.len, 0, 8 * f.cs);
        f.len += 8 * f.cs;
        for (uint64_t c = nb; c < nb + 8; c += 2)
            rc_set(&f, c, 1);
    }
    cr_assert_not_null(fs);
    cr_assert_eq(memfs_put(fs, "/m/orig", f.d, f.len), 0);
    free(f.d);

    for (n = 1; n < 10000 && !done; n++) {
        const uint8_t *d;
        size_t len;
        io_fault *fa;
        qcow2_image *img;
        qcow2_check_result r;
        struct lines lines;
        int rc;

        d = memfs_get(fs, "/m/orig", &len);
        cr_assert_eq(memfs_put(fs, "/m/t", d, len), 0);
        img = open_faulty(fs, "/m/t", &fa);
        cr_assert_not_null(img);
        io_fault_fail(fa, IO_FAULT_ALL, n, 5 /* EIO */, false);
        memset(&r, 0, sizeof(r));
        rc = qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &r);
        if (!io_fault_fired(fa)) {
            cr_assert_eq(rc, 0);
            cr_assert_eq(r.leaks_fixed, 4);
            done = true;
        } else {
            cr_assert_neq(rc, 0, "fault %" PRIu64 " fired but the repair reported success", n);
        }
        close_faulty(img, fa);
        /* Reopened: the image has at most leaks, and reads as before. */
        img = open_faulty(fs, "/m/t", &fa);
        cr_assert_not_null(img, "fault %" PRIu64 ": reopen failed", n);
        memset(&r, 0, sizeof(r));
        memset(&lines, 0, sizeof(lines));
        r.report = collect;
        r.payload = &lines;
        cr_assert_eq(qcow2_image_check(img, 0, &r), 0);
        cr_assert_eq(r.corruptions, 0, "fault %" PRIu64 " (rc %d): %" PRIu64 " corruptions:\n%s", n,
                     rc, r.corruptions, lines.text);
        cr_assert_eq(r.check_errors, 0);
        {
            uint8_t b[512];
            cr_assert_eq(qcow2_image_read(img, b, sizeof(b), 100 * 1024), 0);
            cr_assert_eq(b[0], 1);
            cr_assert_eq(b[511], 1);
        }
        if (done)
            cr_assert_eq(r.leaks, 0);
        close_faulty(img, fa);
    }
    cr_assert(done, "the repair never completed");
    cr_log_info("repair fault sweep: %" PRIu64 " points", n - 1);
    memfs_free(fs);
}

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

Test(check, hostile_metadata_never_crashes)
{
    const char *p;
    struct file f;
    memfs *fs = memfs_new();
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    unsigned opened = 0;

    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    p = path_of("hostile.qcow2");
    cr_assert_eq(sh("qemu-img create -q -f qcow2 -o cluster_size=4k,extended_l2=off '%s' 8M", p),
                 0);
    cr_assert_eq(sh("qemu-io -c 'write -P 1 0 300k' -c 'write -c -P 2 1M 64k' '%s'", p), 0);
    cr_assert_eq(sh("qemu-img snapshot -c s1 '%s'", p), 0);
    cr_assert_eq(sh("qemu-io -c 'write -P 3 0 8k' '%s'", p), 0);
    f = file_load(p);
    cr_assert_not_null(fs);
    for (unsigned iter = 0; iter < 300; iter++) {
        uint8_t *d = malloc(f.len);
        io_fault *fa;
        qcow2_image *img;
        qcow2_check_result r;

        cr_assert_not_null(d);
        memcpy(d, f.d, f.len);
        /* Flip bytes in the metadata area (the first 16 clusters) and anywhere. */
        for (unsigned k = 0; k < 1 + iter % 8; k++) {
            uint64_t where = rng(&seed) % (iter % 3 ? 16 * f.cs : f.len);
            if (where >= 72 || iter % 5 == 0)
                d[where] ^= (uint8_t)(1u << (rng(&seed) % 8));
        }
        cr_assert_eq(memfs_put(fs, "/m/h", d, f.len), 0);
        free(d);
        img = open_faulty(fs, "/m/h", &fa);
        if (img) {
            opened++;
            memset(&r, 0, sizeof(r));
            qcow2_image_check(img, 0, &r);
            memset(&r, 0, sizeof(r));
            qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &r);
        }
        close_faulty(img, fa);
    }
    free(f.d);
    cr_assert_gt(opened, 50);
    memfs_free(fs);
}

Test(check, repair_allocates_a_missing_refcount_block)
{
    char orig[160], p[160];
    qcow2_check_result r;
    struct file f;

    if (!have_qemu())
        cr_skip_test("qemu-img not installed");
    /* 512-byte clusters: 256 refcounts per block, so 200 KiB of data spans two blocks. */
    snprintf(orig, sizeof(orig), "%s", path_of("g.qcow2"));
    snprintf(p, sizeof(p), "%s", path_of("g-fixed.qcow2"));
    cr_assert_eq(sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 4M", orig), 0);
    cr_assert_eq(sh("qemu-io -c 'write -P 1 0 200k' '%s'", orig), 0);
    f = file_load(orig);
    memset(f.d + qcow2__be64(f.d + 48) + 8, 0, 8); /* drop the second refcount block */
    file_save(&f, orig);
    cr_assert_eq(sh("cp '%s' '%s'", orig, p), 0);
    cr_assert_eq(our_check(p, 0, &r, NULL), 0);
    cr_assert_gt(r.corruptions, 100);
    cr_assert_eq(our_check(p, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &r, NULL), 0);
    cr_assert_eq(r.corruptions + r.leaks + r.check_errors, 0);
    cr_assert_gt(r.corruptions_fixed, 100);
    cr_assert_eq(sh("qemu-img check '%s'", p), 0);
    cr_assert_eq(sh("qemu-img compare -q '%s' '%s'", orig, p), 0);
    compare_with_qemu(p);
}
