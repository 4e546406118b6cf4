/*
 * Internal snapshots: create, apply, delete and read-only views
 * (qcow2/snapshot.c, qcow2/snap_edit.c), against qemu-img 7.2 as the oracle.
 *
 *  - interop both ways: snapshots qemu-img made are listed, read (a view
 *    equals `qemu-img convert -l`), applied and deleted here; snapshots made
 *    here are listed, read, applied and deleted by qemu-img; `qemu-img
 *    check` is clean after every step;
 *  - a seeded random mix of writes, zero writes, discards, growth and
 *    snapshot create/apply/delete against a model of every snapshot;
 *  - fault sweeps over create, apply and delete: the N-th I/O call fails
 *    (N = 1, 2, ... until the operation completes), and crash mode (a power
 *    cut after the N-th write-type call). Afterwards the image opens, its
 *    check finds no corruption other than a COPIED flag one step behind its
 *    refcount (the window no ordering closes, see snap_edit.c; `check -r all`
 *    makes it clean), every snapshot in the table reads as its model, and
 *    the active state is the old one or the new one; qemu-img check runs on
 *    every point (a lagging COPIED flag is the only error it may report).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_fault.h"
#include "memfs.h"
#include "qcow2_int.h"
#include "qemu_oracle.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)
#define IMG "/m/img.qcow2"
#define MAXSZ (4 * MiB)
#define MAXSNAP 8

static const char *last_msg(void)
{
    const char *m = qcow2_error_last()->message;
    return m ? m : "(no message)";
}

static uint64_t rng(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* ---- shared helpers ------------------------------------------------------- */

static qcow2_image *open_mem(memfs *fs, bool rw)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    qcow2_io *io;
    int rc;

    o.flags = rw ? QCOW2_OPEN_RDWR : 0;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(memfs_open(&io, IMG, rw ? QCOW2_IO_RDWR : 0, fs), 0);
    rc = qcow2_image_open_io(&img, io, IMG, &o);
    cr_assert_eq(rc, 0, "open: %s", last_msg());
    return img;
}

static void create_mem(memfs *fs, uint64_t size, unsigned version, uint32_t cs, bool extl2,
                       unsigned refcount_bits)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    co.size = size;
    co.qcow2_version = version;
    co.cluster_size = cs;
    co.extended_l2 = extl2;
    co.refcount_bits = refcount_bits;
    co.open_fn = memfs_open;
    co.open_payload = fs;
    cr_assert_eq(qcow2_image_create(IMG, &co), 0, "create: %s", last_msg());
}

/* Lines of a check report, gathered for messages and for the COPIED rule. */
struct report {
    char text[4096];
    unsigned lines, copied_lines;
};

static void report_line(const char *line, void *payload)
{
    struct report *r = payload;
    size_t used = strlen(r->text);

    r->lines++;
    if (strstr(line, "OFLAG_COPIED"))
        r->copied_lines++;
    if (used + strlen(line) + 2 < sizeof(r->text)) {
        strcat(r->text, line);
        strcat(r->text, "\n");
    }
}

/* qemu-img check on a dump of the memfs image; returns its status. */
static int qemu_check_mem(memfs *fs, char *out, size_t out_len)
{
    char dir[64], path[128];
    int st;

    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "snapops"), 0);
    snprintf(path, sizeof(path), "%s/img.qcow2", dir);
    cr_assert_eq(qo_dump_memfs(fs, IMG, path), 0);
    st = qo_check(path, out, out_len);
    qo_rmtree(dir);
    return st;
}

static void read_all(qcow2_image *img, uint8_t *buf)
{
    uint64_t size = qcow2_image_size(img);
    int rc = size ? qcow2_image_read(img, buf, (size_t)size, 0) : 0;

    cr_assert_eq(rc, 0, "read: %s", last_msg());
}

/* ---- interop: snapshots made by qemu-img ---------------------------------- */

/* Read a whole real file; cr_assert on failure. */
static uint8_t *slurp(const char *path, size_t *len)
{
    uint8_t *b = qo_read_file(path, len);
    cr_assert_not_null(b, "cannot read %s", path);
    return b;
}

/* The content of path at snapshot snap (NULL: active) through the library, compared with want. */
static void expect_content(const char *path, const char *snap, const uint8_t *want, size_t len)
{
    qcow2_image *img;
    uint8_t *buf;
    int rc;

    if (snap)
        rc = qcow2_image_open_snapshot(&img, path, snap, NULL);
    else
        rc = qcow2_image_open(&img, path, NULL);
    cr_assert_eq(rc, 0, "open %s@%s: %s", path, snap ? snap : "-", last_msg());
    /*
     * qemu-img convert -l keeps the image's current virtual size (zeroes past
     * the snapshot's L1); a view has the snapshot's own disk size. The bytes
     * beyond it must be zero in qemu's output.
     */
    cr_assert(qcow2_image_size(img) <= len, "%s@%s: size %" PRIu64 " want %zu", path,
              snap ? snap : "-", qcow2_image_size(img), len);
    if (!snap)
        cr_assert_eq(qcow2_image_size(img), len);
    buf = malloc(len);
    read_all(img, buf);
    cr_assert(memcmp(buf, want, (size_t)qcow2_image_size(img)) == 0, "%s@%s: content differs",
              path, snap ? snap : "-");
    for (size_t i = (size_t)qcow2_image_size(img); i < len; i++)
        cr_assert_eq(want[i], 0, "%s@%s: qemu's tail past the snapshot is not zero", path,
                     snap ? snap : "-");
    free(buf);
    qcow2_image_close(img);
}

static void expect_qemu_clean(const char *path, const char *step)
{
    char out[4096];
    int st = qo_check(path, out, sizeof(out));
    cr_assert_eq(st, 0, "qemu-img check after %s: status %d\n%s", step, st, out);
}

static void interop_from_qemu(const char *create_opts)
{
    bool v2 = strstr(create_opts, "compat=0.10") != NULL;
    char dir[64], out[4096];
    char img_path[128], a_raw[128], b_raw[128];
    size_t la, lb;
    uint8_t *a, *b;
    qcow2_image *img;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_snapshot_info si;
    size_t idx;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not available");
    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "snapq"), 0);
    snprintf(img_path, sizeof(img_path), "%s/i.qcow2", dir);
    snprintf(a_raw, sizeof(a_raw), "%s/a.raw", dir);
    snprintf(b_raw, sizeof(b_raw), "%s/b.raw", dir);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd %s && qemu-img create -q -f qcow2 %s i.qcow2 3M && "
                       "qemu-io -c 'write -P 1 0 200k' -c 'write -c -P 2 1M 64k' "
                       "-c 'write -z 2M 64k' i.qcow2 >/dev/null && "
                       "qemu-img snapshot -c a i.qcow2 && "
                       "qemu-io -c 'write -P 3 64k 64k' -c 'write -P 4 1M 4k' "
                       "-c 'discard 0 64k' i.qcow2 >/dev/null && "
                       "{ %s || qemu-img resize -q i.qcow2 4M; } && "
                       "qemu-io -c 'write -P 5 2M 100k' i.qcow2 >/dev/null && "
                       "qemu-img snapshot -c b i.qcow2 && "
                       "qemu-io -c 'write -P 6 0 1M' i.qcow2 >/dev/null && "
                       "qemu-img convert -l a -O raw i.qcow2 a.raw && "
                       "qemu-img convert -l b -O raw i.qcow2 b.raw",
                       dir, create_opts, v2 ? "true" : "false"),
                 0, "%s", out);
    a = slurp(a_raw, &la);
    b = slurp(b_raw, &lb);
    cr_assert_eq(lb, v2 ? 3 * MiB : 4 * MiB);

    /* Listed with qemu's fields. */
    cr_assert_eq(qcow2_image_open(&img, img_path, NULL), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_count(img), 2);
    cr_assert_eq(qcow2_snapshot_find(img, "a", &idx), 0);
    cr_assert_eq(qcow2_snapshot_get(img, idx, &si), 0);
    cr_assert_str_eq(si.id, "1");
    cr_assert_eq(si.disk_size, 3 * MiB);
    cr_assert_eq(qcow2_snapshot_find(img, "2", &idx), 0); /* by id */
    cr_assert_eq(qcow2_snapshot_get(img, idx, &si), 0);
    cr_assert_str_eq(si.name, "b");
    cr_assert_eq(qcow2_snapshot_find(img, "nope", &idx), QCOW2_ENOTFOUND);
    qcow2_image_close(img);

    /* Read without applying: equals qemu-img convert -l. */
    expect_content(img_path, "a", a, la);
    expect_content(img_path, "b", b, lb);
    expect_content(img_path, "1", a, la);

    /* Apply a (the size goes back to 3 MiB), then delete b. */
    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(qcow2_image_open(&img, img_path, &o), 0, "%s", last_msg());
    rc = qcow2_snapshot_apply(img, "a");
    cr_assert_eq(rc, 0, "apply: %s", last_msg());
    qcow2_image_close(img);
    expect_qemu_clean(img_path, "apply a");
    expect_content(img_path, NULL, a, 3 * MiB);
    expect_content(img_path, "b", b, lb);
    cr_assert_eq(qo_sh(out, sizeof(out), "cd %s && qemu-img compare -f qcow2 -F raw i.qcow2 a.raw",
                       dir),
                 0, "%s", out); /* not strict: a.raw's tail past 3 MiB is zero */
    (void)la;

    cr_assert_eq(qcow2_image_open(&img, img_path, &o), 0, "%s", last_msg());
    rc = qcow2_snapshot_delete(img, "b");
    cr_assert_eq(rc, 0, "delete: %s", last_msg());
    /* A write after the apply copies on write: the snapshot keeps its data. */
    {
        uint8_t w[4096];
        memset(w, 9, sizeof(w));
        cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 100 * KiB), 0, "%s", last_msg());
        memcpy(a + 100 * KiB, w, sizeof(w));
    }
    qcow2_image_close(img);
    expect_qemu_clean(img_path, "delete b and write");
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd %s && qemu-img snapshot -l i.qcow2 | tail -n +3 | awk '{print $1, $2}'",
                       dir),
                 0, "%s", out);
    cr_assert_str_eq(out, "1 a\n");
    expect_content(img_path, NULL, a, 3 * MiB);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd %s && qemu-img convert -l a -O raw i.qcow2 a2.raw && "
                       "qemu-img compare -q -f raw -F raw a2.raw a.raw",
                       dir),
                 0, "snapshot a changed after a write to the active state: %s", out);
    free(a);
    free(b);
    qo_rmtree(dir);
}

TestSuite(snapshot_ops);

Test(snapshot_ops, qemu_made_v3, .timeout = 120) { interop_from_qemu(""); }
Test(snapshot_ops, qemu_made_v2, .timeout = 120) { interop_from_qemu("-o compat=0.10"); }
Test(snapshot_ops, qemu_made_extl2, .timeout = 120)
{
    interop_from_qemu("-o extended_l2=on,cluster_size=32k");
}
Test(snapshot_ops, qemu_made_small_clusters_rb8, .timeout = 120)
{
    interop_from_qemu("-o cluster_size=4k,refcount_bits=8");
}

/* ---- interop: snapshots made here ----------------------------------------- */

static void interop_to_qemu(unsigned version, uint32_t cs, bool extl2)
{
    char dir[64], out[4096], path[128], cmd_out[4096];
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    static uint8_t s1[2 * MiB], s2[3 * MiB], cur[3 * MiB];
    qcow2_image *img;
    uint8_t w[96 * 1024];
    uint64_t s2_len;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not available");
    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "snapl"), 0);
    snprintf(path, sizeof(path), "%s/l.qcow2", dir);
    co.size = 2 * MiB;
    co.qcow2_version = version;
    co.cluster_size = cs;
    co.extended_l2 = extl2;
    cr_assert_eq(qcow2_image_create(path, &co), 0, "%s", last_msg());
    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(qcow2_image_open(&img, path, &o), 0, "%s", last_msg());
    memset(s1, 0, sizeof(s1));
    memset(w, 0x11, sizeof(w));
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 10 * KiB), 0, "%s", last_msg());
    memcpy(s1 + 10 * KiB, w, sizeof(w));
    memset(w, 0x22, sizeof(w));
    cr_assert_eq(qcow2_image_write_compressed(img, w, (size_t)cs, 1 * MiB), 0, "%s", last_msg());
    memcpy(s1 + 1 * MiB, w, cs);
    cr_assert_eq(qcow2_snapshot_create(img, "s1", NULL), 0, "%s", last_msg());
    qcow2_image_close(img);
    expect_qemu_clean(path, "create s1");
    cr_assert_eq(qcow2_image_open(&img, path, &o), 0, "%s", last_msg());

    memset(w, 0x33, sizeof(w));
    cr_assert_eq(qcow2_image_write(img, w, 4096, 12 * KiB), 0, "%s", last_msg());
    /* qemu refuses to resize (and to apply across sizes in) a v2 image with snapshots. */
    s2_len = version >= 3 ? 3 * MiB : 2 * MiB;
    if (version >= 3)
        cr_assert_eq(qcow2_image_resize(img, 3 * MiB, false), 0, "%s", last_msg());
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), s2_len - MiB + 512), 0, "%s", last_msg());
    memset(s2, 0, sizeof(s2));
    memcpy(s2, s1, sizeof(s1));
    memcpy(s2 + 12 * KiB, w, 4096);
    memcpy(s2 + s2_len - MiB + 512, w, sizeof(w));
    cr_assert_eq(qcow2_snapshot_create(img, "s2", NULL), 0, "%s", last_msg());
    memset(w, 0x44, sizeof(w));
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 0), 0, "%s", last_msg());
    memcpy(cur, s2, sizeof(s2));
    memcpy(cur, w, sizeof(w));
    (void)cur;
    qcow2_image_close(img);
    expect_qemu_clean(path, "create s2 and write");

    /* qemu-img lists them with its own table and reads them as written. */
    cr_assert_eq(qo_sh(cmd_out, sizeof(cmd_out),
                       "cd %s && qemu-img snapshot -l l.qcow2 | tail -n +3 | "
                       "awk '{print $1, $2, $3, $4, $7, $8}'",
                       dir),
                 0, "%s", cmd_out);
    cr_assert_str_eq(cmd_out, "1 s1 0 B 00:00:00.000 0\n2 s2 0 B 00:00:00.000 0\n");
    cr_assert_eq(qo_write_file("/dev/null", "", 0), 0);
    {
        char p1[128], p2[128];
        snprintf(p1, sizeof(p1), "%s/s1.raw", dir);
        snprintf(p2, sizeof(p2), "%s/s2.raw", dir);
        cr_assert_eq(qo_write_file(p1, s1, sizeof(s1)), 0);
        cr_assert_eq(qo_write_file(p2, s2, s2_len), 0);
    }
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd %s && qemu-img convert -l s1 -O raw l.qcow2 q1.raw && "
                       "qemu-img compare -q -f raw -F raw q1.raw s1.raw && "
                       "qemu-img convert -l s2 -O raw l.qcow2 q2.raw && cmp q2.raw s2.raw",
                       dir),
                 0, "%s", out);
    /* qemu applies and deletes what we made. */
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd %s && qemu-img snapshot -a s1 l.qcow2 && qemu-img check -q l.qcow2 && "
                       "qemu-img compare -q -f qcow2 -F raw l.qcow2 s1.raw && "
                       "qemu-img snapshot -d s2 l.qcow2 && qemu-img check -q l.qcow2 && "
                       "qemu-img snapshot -d s1 l.qcow2 && qemu-img check l.qcow2 && "
                       "qemu-img compare -q -f qcow2 -F raw l.qcow2 s1.raw",
                       dir),
                 0, "%s", out);
    expect_content(path, NULL, s1, sizeof(s1));
    qo_rmtree(dir);
}

Test(snapshot_ops, made_here_v3, .timeout = 120) { interop_to_qemu(3, 65536, false); }
Test(snapshot_ops, made_here_v2, .timeout = 120) { interop_to_qemu(2, 65536, false); }
Test(snapshot_ops, made_here_extl2, .timeout = 120) { interop_to_qemu(3, 32768, true); }
Test(snapshot_ops, made_here_4k, .timeout = 120) { interop_to_qemu(3, 4096, false); }

/* Regression: a write into an L2 table shared with a qemu-made snapshot leaked every cluster it mapped. */
Test(snapshot_ops, write_after_qemu_snapshot_leaks_nothing, .timeout = 60)
{
    char dir[64], out[4096], path[128];
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    uint8_t w[4096];

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not available");
    cr_assert_eq(qo_mkdtemp(dir, sizeof(dir), "snapw"), 0);
    snprintf(path, sizeof(path), "%s/w.qcow2", dir);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd %s && qemu-img create -q -f qcow2 w.qcow2 4M && "
                       "qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 64k 64k' w.qcow2 >/dev/null && "
                       "qemu-img snapshot -c s w.qcow2",
                       dir),
                 0, "%s", out);
    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(qcow2_image_open(&img, path, &o), 0, "%s", last_msg());
    memset(w, 3, sizeof(w));
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 0), 0, "%s", last_msg());
    qcow2_image_close(img);
    expect_qemu_clean(path, "write into a shared table");
    qo_rmtree(dir);
}

/* ---- refusals ------------------------------------------------------------- */

Test(snapshot_ops, refusals)
{
    memfs *fs = memfs_new();
    qcow2_snapshot_opts so = QCOW2_SNAPSHOT_OPTS_INIT;
    qcow2_image *img;

    create_mem(fs, 1 * MiB, 3, 65536, false, 16);
    img = open_mem(fs, false);
    cr_assert_eq(qcow2_snapshot_create(img, "x", NULL), QCOW2_EREADONLY);
    cr_assert_eq(qcow2_image_view_snapshot(img, "x"), QCOW2_ENOTFOUND);
    qcow2_image_close(img);
    img = open_mem(fs, true);
    cr_assert_eq(qcow2_snapshot_create(img, "", NULL), QCOW2_EINVAL);
    cr_assert_eq(qcow2_snapshot_create(img, "x", NULL), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_create(img, "x", NULL), QCOW2_EEXISTS);
    so.id = "1";
    cr_assert_eq(qcow2_snapshot_create(img, "y", &so), QCOW2_EEXISTS);
    so.id = "77";
    cr_assert_eq(qcow2_snapshot_create(img, "y", &so), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_create(img, "z", NULL), 0, "%s", last_msg());
    {
        qcow2_snapshot_info si;
        size_t i;
        cr_assert_eq(qcow2_snapshot_find(img, "z", &i), 0);
        cr_assert_eq(qcow2_snapshot_get(img, i, &si), 0);
        cr_assert_str_eq(si.id, "78"); /* max numeric id + 1 */
        cr_assert_eq(si.icount, 0);
        cr_assert_eq(si.disk_size, 1 * MiB);
    }
    cr_assert_eq(qcow2_snapshot_apply(img, "nope"), QCOW2_ENOTFOUND);
    cr_assert_eq(qcow2_snapshot_delete(img, "nope"), QCOW2_ENOTFOUND);
    cr_assert_eq(qcow2_image_view_snapshot(img, "x"), QCOW2_EINVAL); /* read-write handle */
    qcow2_image_close(img);

    /* A dirty lazy-refcounts image opened without its repair is refused. */
    {
        size_t len;
        const uint8_t *b = memfs_get(fs, IMG, &len);
        uint8_t *c = malloc(len);
        qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
        qcow2_io *io;
        memcpy(c, b, len);
        qcow2__put_be64(c + 72, qcow2__be64(c + 72) | QCOW2_INCOMPAT_DIRTY);
        qcow2__put_be64(c + 80, qcow2__be64(c + 80) | QCOW2_COMPAT_LAZY_REFCOUNTS);
        cr_assert_eq(memfs_put(fs, IMG, c, len), 0);
        free(c);
        o.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_CHECK;
        cr_assert_eq(memfs_open(&io, IMG, QCOW2_IO_RDWR, fs), 0);
        cr_assert_eq(qcow2_image_open_io(&img, io, IMG, &o), 0, "%s", last_msg());
        cr_assert_eq(qcow2_snapshot_create(img, "w", NULL), QCOW2_EUNSUPPORTED);
        cr_assert_eq(qcow2_snapshot_delete(img, "x"), QCOW2_EUNSUPPORTED);
        qcow2_image_close(img);
    }
    memfs_free(fs);
}

/*
 * Bug F2: compressed clusters packed into one host cluster. Each compressed
 * descriptor takes its own reference, so with refcount_bits=2 two of them
 * in one host cluster give it refcount 2, and a snapshot would raise it
 * twice, to 4 > 3. The create must be refused before anything is written
 * (QCOW2_EUNSUPPORTED, like qemu-img's EINVAL), the file must stay
 * byte-identical, not marked corrupt, and writable. With refcount_bits=16
 * the same snapshot fits.
 */
static void packed_compressed(unsigned refcount_bits, bool fits)
{
    memfs *fs = memfs_new();
    qcow2_image *img;
    qcow2_info info;
    qcow2_check_result cr;
    struct report rep;
    uint8_t *data = malloc(128 * KiB), *back = malloc(1 * MiB), *before, *w = malloc(64 * KiB);
    const uint8_t *b;
    size_t len, before_len;
    uint64_t host = 0, v = 0;
    int rc;

    cr_assert(data && back && w);
    memset(data, 7, 128 * KiB);
    memset(w, 9, 64 * KiB);
    create_mem(fs, 1 * MiB, 3, 65536, false, refcount_bits);
    img = open_mem(fs, true);
    cr_assert_eq(qcow2_image_write_compressed(img, data, 128 * KiB, 0), 0, "%s", last_msg());
    cr_assert_eq(qcow2_image_flush(img), 0, "%s", last_msg());
    /* Both compressed clusters share one host cluster, whose refcount is 2. */
    {
        uint64_t e0, e1;
        const uint8_t *t;
        uint64_t l2_off = img->l1[0] & QCOW2_L1E_OFFSET_MASK;
        cr_assert_eq(qcow2__l2_load(img, l2_off, &t), 0, "%s", last_msg());
        e0 = qcow2__be64(t);
        e1 = qcow2__be64(t + img->l2e_bytes);
        cr_assert(e0 & QCOW2_OFLAG_COMPRESSED);
        cr_assert(e1 & QCOW2_OFLAG_COMPRESSED);
        host = (e0 & img->coff_mask) >> img->cluster_bits;
        cr_assert_eq(host, (e1 & img->coff_mask) >> img->cluster_bits, "not packed together");
        cr_assert_eq(qcow2__refcount_get(img, host, &v), 0);
        cr_assert_eq(v, 2);
    }
    b = memfs_get(fs, IMG, &before_len);
    before = malloc(before_len);
    cr_assert_not_null(before);
    memcpy(before, b, before_len);

    rc = qcow2_snapshot_create(img, "s1", NULL);
    if (!fits) {
        cr_assert_eq(rc, QCOW2_EUNSUPPORTED, "rc %d: %s", rc, last_msg());
        cr_assert(strstr(last_msg(), IMG) && strstr(last_msg(), "refcount width too small") &&
                      !strchr(last_msg(), '\n'),
                  "message: %s", last_msg());
        b = memfs_get(fs, IMG, &len);
        cr_assert(len == before_len && memcmp(b, before, len) == 0, "the file changed");
        cr_assert_eq(qcow2__refcount_get(img, host, &v), 0);
        cr_assert_eq(v, 2);
        cr_assert_eq(qcow2_snapshot_count(img), 0);
    } else {
        cr_assert_eq(rc, 0, "%s", last_msg());
        cr_assert_eq(qcow2__refcount_get(img, host, &v), 0);
        cr_assert_eq(v, 4);
    }
    cr_assert_eq(qcow2_image_get_info(img, &info), 0);
    cr_assert(!info.corrupt, "marked corrupt");
    /* Still writable: a later write (copy on write when the snapshot exists). */
    cr_assert_eq(qcow2_image_write(img, w, 64 * KiB, 0), 0, "%s", last_msg());
    qcow2_image_close(img);

    img = open_mem(fs, false);
    cr_assert_eq(qcow2_image_get_info(img, &info), 0);
    cr_assert(!info.corrupt, "marked corrupt after reopen");
    read_all(img, back);
    cr_assert(memcmp(back, w, 64 * KiB) == 0);
    cr_assert(memcmp(back + 64 * KiB, data, 64 * KiB) == 0);
    memset(&rep, 0, sizeof(rep));
    cr_assert_eq(qcow2_image_check(img, 0, &cr), 0, "%s", last_msg());
    cr_assert(cr.corruptions == 0 && cr.leaks == 0 && cr.check_errors == 0,
              "check: %" PRIu64 " corruptions %" PRIu64 " leaks", cr.corruptions, cr.leaks);
    if (fits) {
        cr_assert_eq(qcow2_image_view_snapshot(img, "s1"), 0, "%s", last_msg());
        read_all(img, back);
        cr_assert(memcmp(back, data, 128 * KiB) == 0, "snapshot content");
    }
    qcow2_image_close(img);
    if (qo_have_qemu()) {
        char out[4096];
        cr_assert_eq(qemu_check_mem(fs, out, sizeof(out)), 0, "qemu-img check:\n%s", out);
    }
    free(before);
    free(data);
    free(back);
    free(w);
    memfs_free(fs);
}

Test(snapshot_ops, packed_compressed_refcount2_refused) { packed_compressed(2, false); }
Test(snapshot_ops, packed_compressed_refcount16_fits) { packed_compressed(16, true); }

/* ---- random operations against a model ------------------------------------ */

struct msnap {
    char name[16];
    uint64_t size;
    uint8_t *data; /* NULL: slot unused */
};

static void random_model(unsigned version, uint32_t cs, bool extl2, uint64_t seed, unsigned steps)
{
    memfs *fs = memfs_new();
    static uint8_t model[MAXSZ], buf[MAXSZ];
    struct msnap snaps[MAXSNAP];
    uint64_t size = 2 * MiB, s = seed;
    unsigned next_name = 0, nb_ops[4] = {0};
    qcow2_image *img;
    char out[4096];

    memset(snaps, 0, sizeof(snaps));
    memset(model, 0, sizeof(model));
    create_mem(fs, size, version, cs, extl2, 16);
    img = open_mem(fs, true);
    for (unsigned step = 0; step < steps; step++) {
        uint64_t r = rng(&s) % 100;
        int rc;

        if (r < 45) {
            uint64_t off = rng(&s) % size, len = 1 + rng(&s) % (3 * cs);
            uint8_t pat = (uint8_t)(step + 1);
            len = qcow2__min(len, size - off);
            memset(buf, pat, (size_t)len);
            rc = qcow2_image_write(img, buf, (size_t)len, off);
            cr_assert_eq(rc, 0, "step %u write: %s", step, last_msg());
            memset(model + off, pat, (size_t)len);
        } else if (r < 52) {
            uint64_t off = rng(&s) % size, len = 1 + rng(&s) % (2 * cs);
            len = qcow2__min(len, size - off);
            rc = qcow2_image_write_zeroes(img, off, len, (rng(&s) & 1) ? QCOW2_ZERO_MAY_UNMAP : 0);
            cr_assert_eq(rc, 0, "step %u zero: %s", step, last_msg());
            memset(model + off, 0, (size_t)len);
        } else if (r < 56 && version >= 3) {
            uint64_t off = (rng(&s) % (size / cs)) * cs, len = cs * (1 + rng(&s) % 3);
            len = qcow2__min(len, size - off);
            rc = qcow2_image_discard(img, off, len);
            cr_assert_eq(rc, 0, "step %u discard: %s", step, last_msg());
            memset(model + off, 0, (size_t)len);
        } else if (r < 58 && size < MAXSZ) {
            uint64_t ns = size + 512 * KiB;
            rc = qcow2_image_resize(img, ns, false);
            cr_assert_eq(rc, 0, "step %u grow: %s", step, last_msg());
            memset(model + size, 0, (size_t)(ns - size));
            size = ns;
        } else if (r < 75) {
            unsigned k;
            for (k = 0; k < MAXSNAP && snaps[k].data; k++)
                ;
            if (k == MAXSNAP)
                continue;
            snprintf(snaps[k].name, sizeof(snaps[k].name), "s%u", next_name++);
            rc = qcow2_snapshot_create(img, snaps[k].name, NULL);
            cr_assert_eq(rc, 0, "step %u create: %s", step, last_msg());
            snaps[k].size = size;
            snaps[k].data = malloc(size);
            memcpy(snaps[k].data, model, size);
            nb_ops[1]++;
        } else if (r < 88) {
            unsigned k = (unsigned)(rng(&s) % MAXSNAP);
            if (!snaps[k].data)
                continue;
            rc = qcow2_snapshot_apply(img, snaps[k].name);
            cr_assert_eq(rc, 0, "step %u apply %s: %s", step, snaps[k].name, last_msg());
            size = snaps[k].size;
            memset(model, 0, sizeof(model));
            memcpy(model, snaps[k].data, size);
            nb_ops[2]++;
        } else {
            unsigned k = (unsigned)(rng(&s) % MAXSNAP);
            if (!snaps[k].data)
                continue;
            rc = qcow2_snapshot_delete(img, snaps[k].name);
            cr_assert_eq(rc, 0, "step %u delete %s: %s", step, snaps[k].name, last_msg());
            free(snaps[k].data);
            snaps[k].data = NULL;
            nb_ops[3]++;
        }
        cr_assert_eq(qcow2_image_size(img), size, "step %u: size", step);
        if (step % 16 == 15 || r >= 58) {
            qcow2_check_result cr;
            struct report rep;
            memset(&cr, 0, sizeof(cr));
            memset(&rep, 0, sizeof(rep));
            cr.report = report_line;
            cr.payload = &rep;
            cr_assert_eq(qcow2_image_flush(img), 0, "%s", last_msg());
            cr_assert_eq(qcow2_image_check(img, 0, &cr), 0);
            cr_assert(cr.corruptions == 0 && cr.leaks == 0, "step %u: check %" PRIu64 " corruptions %" PRIu64 " leaks\n%s",
                      step, cr.corruptions, cr.leaks, rep.text);
            read_all(img, buf);
            cr_assert(memcmp(buf, model, size) == 0, "step %u: active content differs", step);
        }
    }
    qcow2_image_close(img);
    /* Every snapshot reads as its model through a view; qemu-img agrees the image is clean. */
    for (unsigned k = 0; k < MAXSNAP; k++) {
        if (!snaps[k].data)
            continue;
        img = open_mem(fs, false);
        cr_assert_eq(qcow2_image_view_snapshot(img, snaps[k].name), 0, "%s", last_msg());
        cr_assert_eq(qcow2_image_size(img), snaps[k].size);
        read_all(img, buf);
        cr_assert(memcmp(buf, snaps[k].data, snaps[k].size) == 0, "snapshot %s differs",
                  snaps[k].name);
        qcow2_image_close(img);
        free(snaps[k].data);
    }
    if (qo_have_qemu()) {
        int st = qemu_check_mem(fs, out, sizeof(out));
        cr_assert_eq(st, 0, "qemu-img check at the end: %d\n%s", st, out);
    }
    fprintf(stderr, "snapshot_ops random seed %" PRIu64 ": %u creates, %u applies, %u deletes\n",
            seed, nb_ops[1], nb_ops[2], nb_ops[3]);
    memfs_free(fs);
}

Test(snapshot_ops, random_v3_64k, .timeout = 300) { random_model(3, 65536, false, 0x1234567, 400); }
Test(snapshot_ops, random_v2_4k, .timeout = 300) { random_model(2, 4096, false, 0xabcdef1, 300); }
Test(snapshot_ops, random_extl2_32k, .timeout = 300) { random_model(3, 32768, true, 0x7777777, 300); }
Test(snapshot_ops, random_v3_512, .timeout = 300) { random_model(3, 512, false, 0x5151515, 200); }

/* ---- fault injection and crashes ------------------------------------------ */

#define FS_SIZE (1 * MiB)

enum fop { FOP_CREATE, FOP_APPLY, FOP_DELETE };
static const char *const fop_name[] = {"create", "apply", "delete"};

/* The starting image: snapshots "a" and "b", and an active state that differs from both. */
struct fbase {
    uint8_t *bytes;
    size_t len;
    uint8_t a[FS_SIZE], b[FS_SIZE], act[FS_SIZE];
};

static void fbase_make(struct fbase *fb, uint32_t cs)
{
    memfs *fs = memfs_new();
    qcow2_image *img;
    uint8_t w[64 * 1024];
    const uint8_t *p;

    create_mem(fs, FS_SIZE, 3, cs, false, 16);
    img = open_mem(fs, true);
    memset(fb->a, 0, FS_SIZE);
    memset(w, 1, sizeof(w));
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 0), 0);
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 300 * KiB), 0);
    memset(fb->a, 1, 64 * KiB);
    memset(fb->a + 300 * KiB, 1, 64 * KiB);
    cr_assert_eq(qcow2_snapshot_create(img, "a", NULL), 0, "%s", last_msg());
    memcpy(fb->b, fb->a, FS_SIZE);
    memset(w, 2, sizeof(w));
    cr_assert_eq(qcow2_image_write(img, w, 8192, 4096), 0);
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 600 * KiB), 0);
    memset(fb->b + 4096, 2, 8192);
    memset(fb->b + 600 * KiB, 2, 64 * KiB);
    cr_assert_eq(qcow2_snapshot_create(img, "b", NULL), 0, "%s", last_msg());
    memcpy(fb->act, fb->b, FS_SIZE);
    memset(w, 3, sizeof(w));
    cr_assert_eq(qcow2_image_write(img, w, sizeof(w), 290 * KiB), 0);
    memset(fb->act + 290 * KiB, 3, 64 * KiB);
    qcow2_image_close(img);
    p = memfs_get(fs, IMG, &fb->len);
    fb->bytes = malloc(fb->len);
    memcpy(fb->bytes, p, fb->len);
    memfs_free(fs);
}

struct fstats {
    unsigned points, copied_only, leaky, qemu_checked, completed_at;
};

/*
 * Reopen after the fault and check: opens; check finds no corruption other
 * than COPIED flags one step behind (then -r all must leave it clean);
 * every snapshot in the table reads as its model; the active state is the
 * old or the new one.
 */
static void fverify(memfs *fs, struct fbase *fb, enum fop op, uint64_t n, const char *mode,
                    bool run_qemu, struct fstats *st)
{
    static uint8_t buf[FS_SIZE];
    const uint8_t *new_act = op == FOP_APPLY ? fb->a : fb->act;
    qcow2_check_result cr;
    struct report rep;
    qcow2_image *img;
    char out[4096];
    int rc;

    img = open_mem(fs, false);
    memset(&cr, 0, sizeof(cr));
    memset(&rep, 0, sizeof(rep));
    cr.report = report_line;
    cr.payload = &rep;
    rc = qcow2_image_check(img, 0, &cr);
    cr_assert_eq(rc, 0, "[%s %s N=%" PRIu64 "] check: %s", fop_name[op], mode, n, last_msg());
    cr_assert(cr.check_errors == 0 && cr.corruptions == rep.copied_lines,
              "[%s %s N=%" PRIu64 "] %" PRIu64 " corruptions:\n%s", fop_name[op], mode, n,
              cr.corruptions, rep.text);
    st->leaky += cr.leaks > 0;
    read_all(img, buf);
    cr_assert_eq(qcow2_image_size(img), FS_SIZE);
    cr_assert(memcmp(buf, fb->act, FS_SIZE) == 0 || memcmp(buf, new_act, FS_SIZE) == 0,
              "[%s %s N=%" PRIu64 "] active content is neither the old nor the new", fop_name[op],
              mode, n);
    for (size_t i = 0; i < qcow2_snapshot_count(img); i++) {
        qcow2_snapshot_info si;
        qcow2_image *v;
        const uint8_t *want;

        cr_assert_eq(qcow2_snapshot_get(img, i, &si), 0);
        want = strcmp(si.name, "a") == 0 ? fb->a : strcmp(si.name, "b") == 0 ? fb->b : fb->act;
        v = open_mem(fs, false);
        cr_assert_eq(qcow2_image_view_snapshot(v, si.name), 0, "%s", last_msg());
        read_all(v, buf);
        cr_assert(memcmp(buf, want, FS_SIZE) == 0, "[%s %s N=%" PRIu64 "] snapshot %s differs",
                  fop_name[op], mode, n, si.name);
        qcow2_image_close(v);
    }
    qcow2_image_close(img);
    if (run_qemu && qo_have_qemu()) {
        int qs = qemu_check_mem(fs, out, sizeof(out));
        cr_assert(qs == 0 || qs == 3 || (qs == 2 && rep.copied_lines),
                  "[%s %s N=%" PRIu64 "] qemu-img check %d\n%s", fop_name[op], mode, n, qs, out);
        st->qemu_checked++;
    }
    if (rep.copied_lines) {
        /* The lagging flag is what -r all repairs; afterwards the image is clean. */
        st->copied_only++;
        img = open_mem(fs, true);
        memset(&cr, 0, sizeof(cr));
        cr_assert_eq(qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &cr), 0);
        qcow2_image_close(img);
        img = open_mem(fs, false);
        memset(&cr, 0, sizeof(cr));
        cr_assert_eq(qcow2_image_check(img, 0, &cr), 0);
        cr_assert(cr.corruptions == 0 && cr.leaks == 0, "[%s %s N=%" PRIu64 "] not clean after -r all",
                  fop_name[op], mode, n);
        qcow2_image_close(img);
    }
}

static int run_op(qcow2_image *img, enum fop op)
{
    switch (op) {
    case FOP_CREATE:
        return qcow2_snapshot_create(img, "c", NULL);
    case FOP_APPLY:
        return qcow2_snapshot_apply(img, "a");
    case FOP_DELETE:
        return qcow2_snapshot_delete(img, "b");
    }
    return -1;
}

/* crash: crash mode, the N-th write-type call fails persistently, then a power cut. */
static void fault_sweep(enum fop op, uint32_t cs, bool crash)
{
    static struct fbase fb;
    struct fstats st;
    const char *mode = crash ? "crash" : "fail";

    memset(&st, 0, sizeof(st));
    fbase_make(&fb, cs);
    for (uint64_t n = 1;; n++) {
        memfs *fs = memfs_new();
        qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
        qcow2_image *img = NULL;
        qcow2_io *inner;
        io_fault *f;
        bool fired;
        int rc;

        cr_assert_eq(memfs_put(fs, IMG, fb.bytes, fb.len), 0);
        cr_assert_eq(memfs_open(&inner, IMG, QCOW2_IO_RDWR, fs), 0);
        f = io_fault_new(inner);
        o.flags = QCOW2_OPEN_RDWR;
        o.open_fn = memfs_open;
        o.open_payload = fs;
        cr_assert_eq(qcow2_image_open_io(&img, io_fault_io(f), IMG, &o), 0, "%s", last_msg());
        if (crash)
            cr_assert_eq(io_fault_crash_mode(f, true), 0);
        io_fault_fail(f, crash ? IO_FAULT_WRITES : IO_FAULT_ALL, n, EIO, true);
        rc = run_op(img, op);
        fired = io_fault_fired(f);
        cr_assert(fired || rc == 0, "[%s %s N=%" PRIu64 "] failed without a fault: %s",
                  fop_name[op], mode, n, last_msg());
        qcow2_image_close(img);
        if (crash && fired)
            cr_assert_eq(io_fault_crash(f, n * 7919 + cs), 0);
        else if (crash)
            cr_assert_eq(io_fault_crash_mode(f, false), 0);
        io_fault_free(f);
        qcow2_io_close(inner);
        st.points++;
        fverify(fs, &fb, op, n, mode, true, &st);
        memfs_free(fs);
        if (!fired) {
            st.completed_at = (unsigned)n;
            break;
        }
        cr_assert(n < 2000, "sweep does not end");
    }
    fprintf(stderr,
            "snapshot_ops fault sweep %s/%s cs=%u: %u points (op completes at N=%u), %u with "
            "leaks, %u with a lagging COPIED flag, %u checked by qemu-img\n",
            fop_name[op], mode, cs, st.points, st.completed_at, st.leaky, st.copied_only,
            st.qemu_checked);
    free(fb.bytes);
}

Test(snapshot_ops, fail_sweep_create, .timeout = 600) { fault_sweep(FOP_CREATE, 65536, false); }
Test(snapshot_ops, fail_sweep_apply, .timeout = 600) { fault_sweep(FOP_APPLY, 65536, false); }
Test(snapshot_ops, fail_sweep_delete, .timeout = 600) { fault_sweep(FOP_DELETE, 65536, false); }
Test(snapshot_ops, crash_sweep_create, .timeout = 600) { fault_sweep(FOP_CREATE, 4096, true); }
Test(snapshot_ops, crash_sweep_apply, .timeout = 600) { fault_sweep(FOP_APPLY, 4096, true); }
Test(snapshot_ops, crash_sweep_delete, .timeout = 600) { fault_sweep(FOP_DELETE, 4096, true); }

/* Host clusters with a refcount: what the image file keeps allocated. */
static uint64_t clusters_in_use(qcow2_image *img)
{
    uint64_t n = 0, end = (img->file_size + img->cluster_size - 1) >> img->cluster_bits;

    for (uint64_t c = 0; c < end; c++) {
        uint64_t v;
        cr_assert_eq(qcow2__refcount_get(img, c, &v), 0, "%s", last_msg());
        n += v != 0;
    }
    return n;
}

Test(snapshot_ops, unique_bytes_is_what_deleting_the_snapshot_frees)
{
    memfs *fs = memfs_new();
    uint8_t *buf = malloc(1 << 20);
    uint64_t s1 = 0, s2 = 0, before, after;
    qcow2_image *img;

    create_mem(fs, 4 << 20, 3, 65536, false, 16);
    img = open_mem(fs, true);
    memset(buf, 1, 1 << 20);
    cr_assert_eq(qcow2_image_write(img, buf, 1 << 20, 0), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_create(img, "s1", NULL), 0, "%s", last_msg());
    /* Four data clusters and the L2 table are now s1's alone, and its L1 table. */
    memset(buf, 2, 256 << 10);
    cr_assert_eq(qcow2_image_write(img, buf, 256 << 10, 0), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_create(img, "s2", NULL), 0, "%s", last_msg());
    memset(buf, 3, 256 << 10);
    cr_assert_eq(qcow2_image_write(img, buf, 256 << 10, 512 << 10), 0, "%s", last_msg());
    cr_assert_eq(qcow2_image_flush(img), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_unique_bytes(img, "s1", &s1), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_unique_bytes(img, "s2", &s2), 0, "%s", last_msg());
    cr_assert_eq(s1, 6 * 65536, "s1 holds %" PRIu64 " bytes alone", s1);
    /* s2: its L2 table and its L1 table (the clusters the last write replaced are s1's too). */
    cr_assert_eq(s2, 2 * 65536, "s2 holds %" PRIu64 " bytes alone", s2);
    cr_assert_eq(qcow2_snapshot_unique_bytes(img, "nope", &s1), QCOW2_ENOTFOUND);
    /* Deleting s1 frees exactly that (the snapshot table is rewritten in place of itself). */
    cr_assert_eq(qcow2_snapshot_unique_bytes(img, "s1", &s1), 0, "%s", last_msg());
    before = clusters_in_use(img);
    cr_assert_eq(qcow2_snapshot_delete(img, "s1"), 0, "%s", last_msg());
    after = clusters_in_use(img);
    cr_assert_eq((before - after) * 65536, s1, "freed %" PRIu64 " clusters, said %" PRIu64 " bytes",
                 before - after, s1);
    qcow2_image_close(img);
    /* Read-only handles can ask too; with s1 gone, s2 alone holds what the last write replaced. */
    img = open_mem(fs, false);
    cr_assert_eq(qcow2_snapshot_unique_bytes(img, "s2", &s2), 0, "%s", last_msg());
    cr_assert_eq(s2, 6 * 65536, "s2 holds %" PRIu64 " bytes alone", s2);
    qcow2_image_close(img);
    memfs_free(fs);
    free(buf);
}
