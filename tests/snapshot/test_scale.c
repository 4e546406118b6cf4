/*
 * The snapshot tree at scale: a store with 10,000 snapshots and 1,000
 * branches, and every tree command on it (a test of correctness, not of
 * time).
 *
 * Building it through 10,000 `qsnap create` runs would take minutes, so the
 * tree is made directly: the first snapshot through the command line, then
 * the layer files with libqcow2 (512-byte clusters: small files) and the
 * model records with libqsnap's own model calls, saved once. Each of the
 * 1,000 branches has 10 snapshots in a line from the root snapshot; two
 * snapshots in a row share a frozen layer (as a create of a clean head
 * does), and each frozen layer holds one 512-byte write of its own, so every
 * state has content to check. Then `verify` must find it clean, and every
 * tree command runs on it through the qsnap program: list (--tree, --json),
 * info, why, du, export (content checked against the model of the writes),
 * create, revert, switch, branch (create, rename, delete), delete (merging a
 * layer, keeping an unnamed node), commit, and `verify` once more.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "qemu_oracle.h"
#include "qsnap/qsnap.h"
#include "qsnap_int.h"
#include "tree_fixture.h"

#define NBRANCH 1000u
#define PER_BRANCH 10u /* snapshots per branch */
#define DISK_SIZE TF_SIZE
#define SECTORS (DISK_SIZE / 512u)

static char dir[256], disk[512];
static const char *qsnap_bin;

static void teardown(void)
{
    if (dir[0] && getenv("SCALE_KEEP"))
        fprintf(stderr, "kept %s\n", dir);
    else if (dir[0])
        qo_rmtree(dir);
    dir[0] = '\0';
}

TestSuite(scale, .fini = teardown, .timeout = 900);

/* Where layer j (1..5) of branch b writes: one sector, and its byte. */
static unsigned spot(unsigned b, unsigned j)
{
    return (b * 7u + j * 131u) % SECTORS;
}

static int pattern(unsigned b, unsigned j)
{
    return (int)((b * 5u + j) % 250u + 1u);
}

/* Run a qsnap command line (after the program name); its exit status, output in *out. */
static int run(char **out, const char *fmt, ...) QSNAP_PRINTF(2, 3);
static int run(char **out, const char *fmt, ...)
{
    char *args = NULL, *cmd = NULL, *buf = NULL;
    size_t len = 0, cap = 0;
    va_list ap;
    FILE *f;
    int st;

    va_start(ap, fmt);
    cr_assert(vasprintf(&args, fmt, ap) >= 0);
    va_end(ap);
    cr_assert(asprintf(&cmd, "'%s' %s 2>&1", qsnap_bin, args) >= 0);
    f = popen(cmd, "r");
    cr_assert_not_null(f, "%s", cmd);
    for (;;) {
        if (len + 65536 > cap) {
            cap = cap ? cap * 2 : 1u << 20;
            buf = realloc(buf, cap + 1);
            cr_assert_not_null(buf);
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        if (r == 0)
            break;
        len += r;
    }
    buf[len] = '\0';
    st = pclose(f);
    if (getenv("SCALE_TRACE")) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        fprintf(stderr, "%ld.%03ld %s\n", (long)ts.tv_sec, ts.tv_nsec / 1000000, args);
    }
    free(cmd);
    free(args);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Run and require exit status 0; the output. */
static char *must(const char *what, const char *fmt, ...) QSNAP_PRINTF(2, 3);
static char *must(const char *what, const char *fmt, ...)
{
    char *args = NULL, *out = NULL;
    va_list ap;
    int rc;

    va_start(ap, fmt);
    cr_assert(vasprintf(&args, fmt, ap) >= 0);
    va_end(ap);
    rc = run(&out, "%s", args);
    cr_assert_eq(rc, 0, "%s: qsnap %s: exit %d:\n%.4000s", what, args, rc, out);
    free(args);
    return out;
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;

    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/*
 * The fixture's files are made without fsync (a flush does nothing): they
 * are test input, and thousands of fsyncs on a shared disk take minutes.
 * POSIX files, with the flush method of their table replaced.
 */
static qcow2_io_ops nosync_ops;

static int nosync_flush(qcow2_io *io)
{
    (void)io;
    return 0;
}

static int nosync_open(qcow2_io **out, const char *path, unsigned flags, void *payload)
{
    int rc = qcow2_io_posix_open(out, path, flags);

    (void)payload;
    if (rc)
        return rc;
    if (!nosync_ops.version) {
        nosync_ops = *(*out)->ops;
        nosync_ops.flush = nosync_flush;
    }
    (*out)->ops = &nosync_ops;
    return 0;
}

static void fixture_write(const char *path, int pat, uint64_t off, uint64_t len)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    uint8_t buf[512];
    int rc;

    cr_assert(len <= sizeof(buf));
    memset(buf, pat, len);
    oo.flags = QCOW2_OPEN_RDWR;
    oo.open_fn = nosync_open;
    rc = qcow2_image_open(&img, path, &oo);
    cr_assert_eq(rc, 0, "open %s: %s", path, qcow2_error_last()->message);
    rc = qcow2_image_write(img, buf, len, off);
    cr_assert_eq(rc, 0, "write %s: %s", path, qcow2_error_last()->message);
    qcow2_image_close(img);
}

/* The tree, made directly (see the top of the file). */
static void build(void)
{
    qsnap_store *s = NULL;
    struct qsnap__model *m;
    int rc;

    rc = run(NULL, "create '%s' root", disk);
    cr_assert_eq(rc, 0);
    rc = qsnap_store_open(&s, disk, 0);
    cr_assert_eq(rc, 0, "%s", qsnap_error_last()->message);
    m = &s->m;
    cr_assert_eq(m->nn, 1);
    unsigned root = m->nodes[0].id, nbranch = NBRANCH;
    /* A smaller tree for measurements by hand (with SCALE_BUILD_ONLY). */
    if (getenv("SCALE_BUILD_ONLY") && getenv("SCALE_BRANCHES"))
        nbranch = (unsigned)strtoul(getenv("SCALE_BRANCHES"), NULL, 10);
    for (unsigned b = 1; b <= nbranch; b++) {
        unsigned below = 1, parent = root; /* layer 1: the disk */
        for (unsigned j = 1; j <= PER_BRANCH / 2; j++) {
            struct qsnap__layer *l = qsnap__add_layer(m), *bl;
            qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
            char *path, *link;
            cr_assert_not_null(l);
            cr_assert(asprintf(&l->file, "layers/%u.qcow2", l->id) >= 0);
            l->fmt = QCOW2_FORMAT_QCOW2;
            l->backing = below;
            bl = qsnap__layer(m, below);
            link = qsnap__link_name(l->file, bl->file);
            path = qsnap__path(s, l->file);
            co.cluster_size = 512;
            co.open_fn = nosync_open;
            co.backing_file = link;
            co.backing_format = qcow2_format_name(bl->fmt);
            rc = qcow2_image_create(path, &co);
            cr_assert_eq(rc, 0, "%s: %s", path, qcow2_error_last()->message);
            fixture_write(path, pattern(b, j), (uint64_t)spot(b, j) * 512u, 512);
            cr_assert_eq(chmod(path, 0444), 0);
            l = qsnap__layer(m, l->id);
            l->frozen = true;
            rc = qsnap__layer_fingerprint(s, l);
            cr_assert_eq(rc, 0, "%s", qsnap_error_last()->message);
            free(link);
            free(path);
            below = l->id;
            for (unsigned k = 0; k < 2; k++) {
                struct qsnap__node *n = qsnap__add_node(m);
                cr_assert_not_null(n);
                cr_assert(asprintf(&n->name, "b%u-s%u", b, 2 * j - 1 + k) >= 0);
                n->parent = parent;
                n->layer = below;
                n->created = qsnap__now();
                parent = n->id;
            }
        }
        {
            struct qsnap__layer *h = qsnap__add_layer(m), *bl;
            qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
            struct qsnap__branch *br;
            char *path, *link;
            cr_assert_not_null(h);
            cr_assert(asprintf(&h->file, "layers/%u.qcow2", h->id) >= 0);
            h->fmt = QCOW2_FORMAT_QCOW2;
            h->backing = below;
            bl = qsnap__layer(m, below);
            link = qsnap__link_name(h->file, bl->file);
            path = qsnap__path(s, h->file);
            co.backing_file = link;
            co.backing_format = "qcow2";
            co.open_fn = nosync_open;
            rc = qcow2_image_create(path, &co);
            cr_assert_eq(rc, 0, "%s: %s", path, qcow2_error_last()->message);
            free(link);
            free(path);
            br = qsnap__add_branch(m);
            cr_assert_not_null(br);
            cr_assert(asprintf(&br->name, "b%u", b) >= 0);
            br->head = h->id;
            br->base = parent;
            br->created = qsnap__now();
        }
    }
    rc = qsnap__model_check(m, "test");
    cr_assert_eq(rc, 0, "%s", qsnap_error_last()->message);
    rc = qsnap__save_model(s, m);
    cr_assert_eq(rc, 0, "%s", qsnap_error_last()->message);
    qsnap_store_close(s);
}

/* What branch b's snapshot k holds: the writes of its layers 1..(k+1)/2. */
static void expect(uint8_t *buf, unsigned b, unsigned k)
{
    memset(buf, 0, DISK_SIZE);
    for (unsigned j = 1; j <= (k + 1) / 2; j++)
        memset(buf + (size_t)spot(b, j) * 512u, pattern(b, j), 512);
}

/* Export name and compare it with want. */
static void check_export(const char *name, const uint8_t *want)
{
    char path[600], *o = NULL;
    uint8_t *got;
    size_t len = 0;
    int rc;

    snprintf(path, sizeof(path), "%s/export.raw", dir);
    unlink(path);
    rc = run(&o, "export '%s' '%s' '%s'", disk, name, path);
    cr_assert_eq(rc, 0, "export %s: %s", name, o);
    free(o);
    got = qo_read_file(path, &len);
    cr_assert_not_null(got);
    cr_assert_eq(len, DISK_SIZE, "export %s: %zu bytes", name, len);
    cr_assert(memcmp(got, want, DISK_SIZE) == 0, "export %s: content differs from the model", name);
    free(got);
    unlink(path);
}

/* Write one sector with byte pat at sector sec into a branch's head. */
static void head_write(const char *branch, int pat, unsigned sec)
{
    qsnap_store *s = NULL;
    char *f;
    int rc = qsnap_store_open(&s, disk, QSNAP_OPEN_READONLY);

    cr_assert_eq(rc, 0, "%s", qsnap_error_last()->message);
    f = tf_file_of(s, branch);
    cr_assert_not_null(f, "no file for %s", branch);
    qsnap_store_close(s);
    tf_lib_write(f, pat, (uint64_t)sec * 512u, 512);
    free(f);
}

Test(scale, ten_thousand_snapshots)
{
    uint8_t *zero = calloc(1, TF_SIZE), *want = malloc(DISK_SIZE);
    char *out;

    cr_assert(zero && want);
    qsnap_bin = getenv("QSNAP");
    if (!qsnap_bin)
        qsnap_bin = "build/release/qsnap";
    cr_assert_eq(access(qsnap_bin, X_OK), 0, "no qsnap program at %s (set QSNAP)", qsnap_bin);
    tf_setup(dir, sizeof(dir), disk, sizeof(disk), "scale", false, zero);
    build();
    if (getenv("SCALE_BUILD_ONLY")) { /* a store to measure by hand (with SCALE_KEEP=1) */
        free(zero);
        free(want);
        return;
    }

    /* The store as built: clean, and every query answers for every state. */
    free(must("verify", "verify '%s'", disk));
    out = must("list --json", "list '%s' --json", disk);
    cr_assert_eq(count(out, "\"kind\": \"snapshot\""), NBRANCH * PER_BRANCH + 1);
    cr_assert_eq(count(out, "\"kind\": \"branch\""), NBRANCH + 1);
    free(out);
    out = must("list --tree", "list '%s' --tree", disk);
    cr_assert(strstr(out, "b1-s1") && strstr(out, "b1000-s10") && strstr(out, "b777"), "%.2000s",
              out);
    cr_assert_geq(count(out, "\n"), NBRANCH * PER_BRANCH + NBRANCH + 1);
    free(out);
    out = must("info", "info '%s' %s", disk, "b500-s7");
    cr_assert(strstr(out, "b500-s7"), "%s", out);
    free(out);
    out = must("why", "why '%s' %s", disk, "b500-s4");
    cr_assert(strstr(out, "b500-s5"), "why names the dependent snapshot: %s", out);
    free(out);
    out = must("du", "du '%s'", disk);
    cr_assert(strstr(out, "b999-s9"), "%.2000s", out);
    cr_assert_geq(count(out, "\n"), NBRANCH * PER_BRANCH);
    free(out);
    expect(want, 321, 7);
    check_export("b321-s7", want);
    expect(want, 1000, 10);
    check_export("b1000", want);

    /* Changes: switch, a write and a create, revert, branches, deletes, commit. */
    free(must("switch", "switch '%s' %s", disk, "b10"));
    head_write("b10", 0xa1, 0);
    free(must("create", "create '%s' %s", disk, "new1"));
    expect(want, 10, 10);
    memset(want, 0xa1, 512);
    check_export("new1", want);
    free(must("revert", "revert '%s' %s --branch r1", disk, "b20-s3"));
    out = must("current", "current '%s'", disk);
    cr_assert(strstr(out, "r1"), "%s", out);
    free(out);
    expect(want, 20, 3);
    check_export("r1", want);
    free(must("branch", "branch '%s' nb --at %s", disk, "b30-s5"));
    free(must("branch -m", "branch '%s' -m nb %s", disk, "nb2"));
    expect(want, 30, 5);
    check_export("nb2", want);
    free(must("branch -d", "branch '%s' -d %s", disk, "nb2"));
    free(must("delete (merged into the head)", "delete '%s' %s", disk, "b40-s10"));
    free(must("delete (a shared layer's node)", "delete '%s' %s", disk, "b41-s4"));
    free(must("delete (kept unnamed)", "delete '%s' %s", disk, "b42-s2"));
    expect(want, 40, 10);
    check_export("b40", want);
    expect(want, 41, 7);
    check_export("b41-s7", want);
    expect(want, 42, 3);
    check_export("b42-s3", want);
    head_write("b50", 0xb2, 1);
    free(must("commit", "commit '%s' %s", disk, "b50"));
    expect(want, 50, 10);
    check_export("b50-s10", want);
    memset(want + 512, 0xb2, 512);
    check_export("b50", want);
    free(must("delete --children", "delete '%s' %s --children", disk, "b60-s1"));

    /* And the store is still whole and consistent. */
    free(must("verify (after)", "verify '%s'", disk));
    out = must("list --json (after)", "list '%s' --json", disk);
    /* +1 new1, -3 deleted, -10 b60's subtree; branches: +r1, -b60 (b10 kept or dropped) */
    cr_assert_eq(count(out, "\"kind\": \"snapshot\""), NBRANCH * PER_BRANCH + 1 + 1 - 3 - 10);
    free(out);
    free(zero);
    free(want);
}
