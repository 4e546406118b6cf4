/*
 * Fault and crash sweeps for the layer operations qcow2_image_commit() and
 * qcow2_image_rebase(), over whole chains that live in a memfs.
 *
 * Every file the engine opens during the operation (the top, every backing
 * file, the base commit reopens for writing, the new backing chain of a
 * rebase) goes through open_shim(): a memfs handle wrapped in an io_fault
 * (for crash mode's write queue) behind a shim that counts write-type calls
 * (pwrite, flush, truncate, punch) across all files with one counter. For
 * N = 1, 2, ... until the operation completes without reaching N:
 *
 *  - fail sweep: the N-th write-type call fails with EIO; the operation must
 *    return an error (or complete with the right result);
 *  - crash sweep (several seeds per N): the N-th call cuts the power: every
 *    file drops, keeps or tears (per 512-byte sector) the writes it had not
 *    flushed, and every later call fails.
 *
 * Then the chain is reopened from the memfs bytes alone: every layer opens,
 * qcow2_image_check() finds no corruption in any qcow2 layer (leaks are
 * allowed) and the top reads exactly what it read before the operation
 * (commit, safe rebase), or either all of the old or all of the new content
 * (unsafe rebase, which only rewrites the header). After a commit, every
 * 512-byte sector of the base alone reads either its old content or the
 * top's: a table written before the data it points at would show as a
 * sector that is neither. Each sweep prints how many points ran.
 *
 * The "shared" tests give the shim a clone_from (emulated: a read of the
 * source and a write-type call on the target, queued like any write), so a
 * commit takes the sharing path with its put-off, batched shares (write.c);
 * the others have none and take the copying path.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_fault.h"
#include "memfs.h"
#include "qcow2/qcow2.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)
#define MAX_SHIMS 64
#define MAX_LAYERS 4
#define TOP "/m/top.qcow2"

/* ---- the counting shim ---------------------------------------------------- */

struct sweep;

/* One file opened by the engine during a run. */
struct shim {
    qcow2_io base;     /* must be first */
    struct sweep *sw;  /* the run's shared state */
    qcow2_io *inner;   /* memfs handle, closed at the end of the run */
    io_fault *f;       /* crash-mode queue over inner */
    qcow2_io *fio;     /* io_fault_io(f) */
};

/* State shared by every file of one run. */
struct sweep {
    memfs *fs;
    uint64_t nth;      /* the write-type call that fails (0 = none) */
    uint64_t count;    /* write-type calls so far, all files together */
    bool crash;        /* crash mode: the nth call cuts the power */
    uint64_t seed;     /* for io_fault_crash */
    bool fired;        /* the nth call was reached */
    bool crashed;      /* the power is out */
    bool share;        /* handles offer clone_from */
    uint64_t clones;   /* clone_from calls */
    struct shim *shims[MAX_SHIMS];
    unsigned nb_shims;
};

static struct shim *to_shim(qcow2_io *io)
{
    return (struct shim *)io;
}

/* Cut the power on every file of the run. */
static void power_cut(struct sweep *sw)
{
    for (unsigned i = 0; i < sw->nb_shims; i++)
        cr_assert_eq(io_fault_crash(sw->shims[i]->f, sw->seed * 131 + i), 0);
    sw->crashed = true;
}

/* Count one write-type call; -EIO when it is the one that fails. */
static int gate(struct shim *s)
{
    struct sweep *sw = s->sw;

    if (sw->crashed)
        return -EIO;
    sw->count++;
    if (!sw->nth || sw->count != sw->nth)
        return 0;
    sw->fired = true;
    if (sw->crash)
        power_cut(sw);
    return -EIO;
}

static int sh_pread(qcow2_io *io, void *buf, size_t len, uint64_t off)
{
    struct shim *s = to_shim(io);

    if (s->sw->crashed)
        return -EIO;
    return s->fio->ops->pread(s->fio, buf, len, off);
}

static int sh_pwrite(qcow2_io *io, const void *buf, size_t len, uint64_t off)
{
    struct shim *s = to_shim(io);
    int rc = gate(s);

    return rc ? rc : s->fio->ops->pwrite(s->fio, buf, len, off);
}

static int sh_flush(qcow2_io *io)
{
    struct shim *s = to_shim(io);
    int rc = gate(s);

    return rc ? rc : s->fio->ops->flush(s->fio);
}

static int sh_truncate(qcow2_io *io, uint64_t size)
{
    struct shim *s = to_shim(io);
    int rc = gate(s);

    return rc ? rc : s->fio->ops->truncate(s->fio, size);
}

static int sh_get_size(qcow2_io *io, uint64_t *size_out)
{
    struct shim *s = to_shim(io);

    if (s->sw->crashed)
        return -EIO;
    return s->fio->ops->get_size(s->fio, size_out);
}

static int sh_punch(qcow2_io *io, uint64_t off, uint64_t len)
{
    struct shim *s = to_shim(io);
    int rc = gate(s);

    if (rc)
        return rc;
    return s->fio->ops->punch ? s->fio->ops->punch(s->fio, off, len) : -EOPNOTSUPP;
}

static int sh_lock(qcow2_io *io, qcow2_io_lock_mode mode)
{
    struct shim *s = to_shim(io);

    return s->fio->ops->lock ? s->fio->ops->lock(s->fio, mode) : 0;
}

/* The handle stays alive until the end of the run (a crash may still hit its queue). */
static void sh_close(qcow2_io *io)
{
    struct shim *s = to_shim(io);

    s->fio->ops->close(s->fio);
}

/* A reflink, emulated: one counted write-type call that copies the source's bytes. */
static int sh_clone(qcow2_io *io, uint64_t off, qcow2_io *src, uint64_t src_off, uint64_t len)
{
    struct shim *s = to_shim(io);
    uint8_t *buf;
    int rc = gate(s);

    if (rc)
        return rc;
    s->sw->clones++;
    buf = malloc(len);
    cr_assert_not_null(buf);
    rc = src->ops->pread(src, buf, (size_t)len, src_off);
    if (!rc)
        rc = s->fio->ops->pwrite(s->fio, buf, (size_t)len, off);
    free(buf);
    return rc;
}

/* No extent or copy_from: the engine falls back to reads and writes it counts. */
static const qcow2_io_ops shim_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = sh_pread,
    .pwrite = sh_pwrite,
    .flush = sh_flush,
    .truncate = sh_truncate,
    .get_size = sh_get_size,
    .punch = sh_punch,
    .lock = sh_lock,
    .close = sh_close,
};

/* The same with clone_from, for the sharing path. */
static const qcow2_io_ops shim_share_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = sh_pread,
    .pwrite = sh_pwrite,
    .flush = sh_flush,
    .truncate = sh_truncate,
    .get_size = sh_get_size,
    .punch = sh_punch,
    .lock = sh_lock,
    .close = sh_close,
    .clone_from = sh_clone,
};

/* Set per test (each runs in its own process). */
static bool g_share;            /* the runs offer clone_from */
static uint64_t g_max_clones;   /* shared: a clean run makes 1..this many clone calls */
static uint8_t *g_base_old;     /* commit: the base's own content before */
static uint64_t g_base_old_size;

/* qcow2_io_open_fn: a memfs file behind io_fault and the counting shim. */
static int open_shim(qcow2_io **out, const char *path, unsigned flags, void *payload)
{
    struct sweep *sw = payload;
    struct shim *s;
    int rc;

    if (sw->crashed)
        return -EIO;
    cr_assert_lt(sw->nb_shims, MAX_SHIMS);
    s = calloc(1, sizeof(*s));
    cr_assert_not_null(s);
    rc = memfs_open(&s->inner, path, flags, sw->fs);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->f = io_fault_new(s->inner);
    cr_assert_not_null(s->f);
    if (sw->crash)
        cr_assert_eq(io_fault_crash_mode(s->f, true), 0);
    s->fio = io_fault_io(s->f);
    s->base.ops = sw->share ? &shim_share_ops : &shim_ops;
    s->sw = sw;
    sw->shims[sw->nb_shims++] = s;
    *out = &s->base;
    return 0;
}

/* Release every file of the run (unflushed crash-mode writes are lost, as after a power cut). */
static void end_run(struct sweep *sw)
{
    for (unsigned i = 0; i < sw->nb_shims; i++) {
        io_fault_free(sw->shims[i]->f);
        qcow2_io_close(sw->shims[i]->inner);
        free(sw->shims[i]);
    }
    sw->nb_shims = 0;
}

/* ---- building chains in memory -------------------------------------------- */

static const char *last_msg(void)
{
    const char *m = qcow2_error_last()->message;
    return m ? m : "(no message)";
}

static void fill(uint8_t *p, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull | 1;

    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 32);
    }
}

static void put_raw(memfs *fs, const char *path, uint64_t size, uint64_t seed)
{
    uint8_t *buf = malloc(size);

    cr_assert_not_null(buf);
    fill(buf, size, seed);
    memset(buf + size / 3, 0, 64 * KiB); /* a zero run */
    cr_assert_eq(memfs_put(fs, path, buf, size), 0);
    free(buf);
}

struct qspec {
    const char *path;
    uint64_t size;
    uint32_t version;
    uint32_t cluster_size;
    bool extended_l2;
    uint32_t compression_type;
    const char *backing; /* relative name, or NULL */
    const char *backing_format;
};

static void make_qcow2(memfs *fs, const struct qspec *q)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    co.size = q->size;
    co.qcow2_version = q->version;
    co.cluster_size = q->cluster_size;
    co.extended_l2 = q->extended_l2;
    co.compression_type = q->compression_type;
    co.backing_file = q->backing;
    co.backing_format = q->backing_format;
    co.open_fn = memfs_open;
    co.open_payload = fs;
    cr_assert_eq(qcow2_image_create(q->path, &co), 0, "create %s: %s", q->path, last_msg());
}

/* Open path (with its chain) straight from the memfs, without faults. */
static int open_plain(memfs *fs, const char *path, bool rw, qcow2_image **out)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_io *io;
    int rc = memfs_open(&io, path, rw ? QCOW2_IO_RDWR : 0, fs);

    if (rc < 0)
        return rc;
    o.flags = rw ? QCOW2_OPEN_RDWR : 0;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    return qcow2_image_open_io(out, io, path, &o);
}

enum wkind { W_DATA, W_ZERO, W_COMP, W_DISCARD };

struct wop {
    enum wkind kind;
    uint64_t off;
    uint64_t len;
};

static void apply_writes(memfs *fs, const char *path, const struct wop *w, size_t n, uint64_t seed)
{
    qcow2_image *img;
    uint8_t *buf;

    cr_assert_eq(open_plain(fs, path, true, &img), 0, "open %s: %s", path, last_msg());
    for (size_t i = 0; i < n; i++) {
        int rc = 0;

        switch (w[i].kind) {
        case W_DATA:
        case W_COMP:
            buf = malloc(w[i].len);
            cr_assert_not_null(buf);
            fill(buf, w[i].len, seed + i);
            if (w[i].kind == W_COMP)
                memset(buf, (int)(0x40 + i), w[i].len / 2); /* compressible */
            rc = w[i].kind == W_COMP ? qcow2_image_write_compressed(img, buf, w[i].len, w[i].off)
                                     : qcow2_image_write(img, buf, w[i].len, w[i].off);
            free(buf);
            break;
        case W_ZERO:
            rc = qcow2_image_write_zeroes(img, w[i].off, w[i].len, 0);
            break;
        case W_DISCARD:
            rc = qcow2_image_discard(img, w[i].off, w[i].len);
            break;
        }
        cr_assert_eq(rc, 0, "write %zu to %s: %s", i, path, last_msg());
    }
    cr_assert_eq(qcow2_image_flush(img), 0);
    qcow2_image_close(img);
}

/* The guest content of path (with its chain), read from the memfs. */
static uint8_t *read_view(memfs *fs, const char *path, uint64_t *size_out)
{
    qcow2_image *img;
    uint8_t *buf;

    cr_assert_eq(open_plain(fs, path, false, &img), 0, "open %s: %s", path, last_msg());
    *size_out = qcow2_image_size(img);
    buf = malloc(*size_out);
    cr_assert_not_null(buf);
    cr_assert_eq(qcow2_image_read(img, buf, *size_out, 0), 0, "read %s: %s", path, last_msg());
    qcow2_image_close(img);
    return buf;
}

/* ---- scenarios ------------------------------------------------------------ */

enum op_kind { OP_COMMIT, OP_REBASE_SAFE, OP_REBASE_UNSAFE };

struct scenario {
    const char *name;
    void (*build)(memfs *fs);
    enum op_kind op;
    unsigned base_depth;    /* commit: layer to commit into (1 = top's backing) */
    bool keep_top;          /* commit -d */
    const char *new_backing;  /* rebase: the new backing file (relative) */
    const char *new_format;
    const char *layers[MAX_LAYERS]; /* every file of the chain(s), for the checks */
};

/* raw 1 MiB base under a 2 MiB v3 top: the base grows. */
static void build_raw_grow(memfs *fs)
{
    static const struct wop w[] = {
        {W_DATA, 64 * KiB, 100 * KiB}, {W_ZERO, 300 * KiB, 64 * KiB}, {W_DATA, 1536 * KiB, 64 * KiB},
        {W_DATA, 900 * KiB + 7, 200 * KiB}, {W_ZERO, 5 * KiB, 3 * KiB},
    };
    struct qspec top = {TOP, 2 * MiB, 3, 65536, false, 0, "base.raw", "raw"};

    put_raw(fs, "/m/base.raw", 1 * MiB, 1);
    make_qcow2(fs, &top);
    apply_writes(fs, TOP, w, sizeof(w) / sizeof(w[0]), 10);
}

/* qcow2 v3 4k base <- extended-L2 mid <- v2 top; committed into the base. */
static void build_deep_qcow2(memfs *fs)
{
    static const struct wop wb[] = {{W_DATA, 0, 512 * KiB}, {W_DATA, 800 * KiB, 100 * KiB}};
    static const struct wop wm[] = {
        {W_DATA, 100 * KiB + 3, 5000}, {W_ZERO, 400 * KiB, 32 * KiB}, {W_DATA, 1100 * KiB, 40 * KiB},
        {W_DISCARD, 0, 64 * KiB},
    };
    static const struct wop wt[] = {{W_DATA, 110 * KiB, 64 * KiB}, {W_DATA, 1300 * KiB, 8 * KiB}};
    struct qspec base = {"/m/base.qcow2", 1 * MiB, 3, 4096, false, 0, NULL, NULL};
    struct qspec mid = {"/m/mid.qcow2", 1536 * KiB, 3, 32768, true, 0, "base.qcow2", "qcow2"};
    struct qspec top = {TOP, 1536 * KiB, 2, 65536, false, 0, "mid.qcow2", "qcow2"};

    make_qcow2(fs, &base);
    apply_writes(fs, base.path, wb, 2, 20);
    make_qcow2(fs, &mid);
    apply_writes(fs, mid.path, wm, 4, 30);
    make_qcow2(fs, &top);
    apply_writes(fs, TOP, wt, 2, 40);
}

/* The same chain with a v3 top (its header carries the feature-name table). */
static void build_deep_qcow2_v3_top(memfs *fs)
{
    static const struct wop wt[] = {{W_DATA, 200 * KiB, 64 * KiB}};
    struct qspec top = {TOP, 1536 * KiB, 3, 65536, false, 0, "mid.qcow2", "qcow2"};

    build_deep_qcow2(fs);
    cr_assert_eq(memfs_remove(fs, TOP), 0);
    make_qcow2(fs, &top);
    apply_writes(fs, TOP, wt, 1, 45);
}

/* zstd v3 base (some compressed clusters) under a 512-byte-cluster top. */
static void build_zstd_small(memfs *fs)
{
    static const struct wop wb[] = {{W_COMP, 0, 128 * KiB}, {W_DATA, 256 * KiB, 64 * KiB}};
    static const struct wop wt[] = {
        {W_DATA, 1000, 3000}, {W_ZERO, 64 * KiB, 4 * KiB}, {W_DATA, 260 * KiB, 700}, {W_DATA, 900 * KiB, 2048},
    };
    struct qspec base = {"/m/base.qcow2", 1 * MiB, 3, 65536, false, 1, NULL, NULL};
    struct qspec top = {TOP, 1 * MiB, 3, 512, false, 0, "base.qcow2", "qcow2"};

    make_qcow2(fs, &base);
    apply_writes(fs, base.path, wb, 2, 50);
    make_qcow2(fs, &top);
    apply_writes(fs, TOP, wt, 4, 60);
}

/*
 * A qcow2 base under a top with 64 KiB clusters written in scattered order:
 * read in file order, the top's clusters go into new base clusters one after
 * the other, so the sharing path batches them. The base's first MiB is
 * compressed (its old content is not zero, and commit gives it new clusters,
 * so a table written before its data would show); one top cluster lands on a
 * cluster the base owns (in place), one is compressed in the top (copied).
 * Runs without a host offset (the compressed cluster, the zeroes) sort by
 * guest offset, here before the others: the last shares are still pending
 * at the final flush.
 */
static void build_scattered(memfs *fs, uint32_t base_cluster)
{
    static const struct wop wb[] = {{W_COMP, 0, 1024 * KiB}, {W_DATA, 1024 * KiB, 256 * KiB}};
    static const struct wop wt[] = {
        {W_COMP, 0, 64 * KiB},          {W_DATA, 1536 * KiB, 64 * KiB}, {W_DATA, 128 * KiB, 64 * KiB},
        {W_DATA, 704 * KiB, 128 * KiB}, {W_DATA, 320 * KiB, 64 * KiB},  {W_DATA, 1152 * KiB, 64 * KiB},
        {W_DATA, 1920 * KiB, 64 * KiB}, {W_ZERO, 64 * KiB, 64 * KiB},   {W_DATA, 448 * KiB, 64 * KiB},
    };
    struct qspec base = {"/m/base.qcow2", 2 * MiB, 3, base_cluster, false, 0, NULL, NULL};
    struct qspec top = {TOP, 2 * MiB, 3, 65536, false, 0, "base.qcow2", "qcow2"};

    make_qcow2(fs, &base);
    apply_writes(fs, base.path, wb, 2, 90);
    make_qcow2(fs, &top);
    apply_writes(fs, TOP, wt, sizeof(wt) / sizeof(wt[0]), 100);
}

static void build_scattered_64k(memfs *fs)
{
    build_scattered(fs, 65536);
}

/* 4 KiB base clusters: each 64 KiB cluster of the top is sixteen of the base's. */
static void build_scattered_4k(memfs *fs)
{
    build_scattered(fs, 4096);
}

/* A top over old.raw, and a new qcow2 backing file that partly agrees with it. */
static void build_rebase(memfs *fs)
{
    static const struct wop wn[] = {{W_DATA, 512 * KiB, 128 * KiB}, {W_ZERO, 0, 64 * KiB}};
    static const struct wop wt[] = {{W_DATA, 100 * KiB, 3 * KiB}, {W_ZERO, 600 * KiB, 16 * KiB}};
    struct qspec nw = {"/m/new.qcow2", 768 * KiB, 3, 16384, false, 0, NULL, NULL};
    struct qspec top = {TOP, 1 * MiB, 3, 65536, false, 0, "old.raw", "raw"};
    qcow2_image *img;
    uint8_t *old;
    uint64_t size;

    put_raw(fs, "/m/old.raw", 1 * MiB, 2);
    make_qcow2(fs, &nw);
    /* The new backing file starts as a copy of the old one's first 768 KiB. */
    old = read_view(fs, "/m/old.raw", &size);
    cr_assert_eq(open_plain(fs, nw.path, true, &img), 0);
    cr_assert_eq(qcow2_image_write(img, old, 768 * KiB, 0), 0);
    qcow2_image_close(img);
    free(old);
    apply_writes(fs, nw.path, wn, 2, 70);
    make_qcow2(fs, &top);
    apply_writes(fs, TOP, wt, 2, 80);
}

static const struct scenario scenarios[] = {
    {"commit raw base grows", build_raw_grow, OP_COMMIT, 1, false, NULL, NULL,
     {TOP, "/m/base.raw", NULL, NULL}},
    {"commit -d raw base", build_raw_grow, OP_COMMIT, 1, true, NULL, NULL,
     {TOP, "/m/base.raw", NULL, NULL}},
    {"commit deep qcow2 -b base", build_deep_qcow2, OP_COMMIT, 2, false, NULL, NULL,
     {TOP, "/m/mid.qcow2", "/m/base.qcow2", NULL}},
    {"commit deep qcow2 -b base, v3 top", build_deep_qcow2_v3_top, OP_COMMIT, 2, false, NULL, NULL,
     {TOP, "/m/mid.qcow2", "/m/base.qcow2", NULL}},
    {"commit zstd base, 512 B top", build_zstd_small, OP_COMMIT, 1, false, NULL, NULL,
     {TOP, "/m/base.qcow2", NULL, NULL}},
    {"rebase safe", build_rebase, OP_REBASE_SAFE, 0, false, "new.qcow2", "qcow2",
     {TOP, "/m/old.raw", "/m/new.qcow2", NULL}},
    {"rebase safe to none", build_rebase, OP_REBASE_SAFE, 0, false, NULL, NULL,
     {TOP, "/m/old.raw", "/m/new.qcow2", NULL}},
    {"rebase unsafe", build_rebase, OP_REBASE_UNSAFE, 0, false, "new.qcow2", "qcow2",
     {TOP, "/m/old.raw", "/m/new.qcow2", NULL}},
    {"commit scattered, 64k qcow2 base", build_scattered_64k, OP_COMMIT, 1, false, NULL, NULL,
     {TOP, "/m/base.qcow2", NULL, NULL}},
    {"commit -d scattered, 4k qcow2 base", build_scattered_4k, OP_COMMIT, 1, true, NULL, NULL,
     {TOP, "/m/base.qcow2", NULL, NULL}},
};

/* Run the operation with every file behind the shim; returns its result. */
static int run_op(const struct scenario *sc, struct sweep *sw)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *top;
    qcow2_io *io;
    int rc;

    o.flags = QCOW2_OPEN_RDWR | (sc->op == OP_REBASE_UNSAFE ? QCOW2_OPEN_NO_BACKING : 0);
    o.open_fn = open_shim;
    o.open_payload = sw;
    rc = open_shim(&io, TOP, QCOW2_IO_RDWR, sw);
    if (rc < 0)
        return rc;
    rc = qcow2_image_open_io(&top, io, TOP, &o);
    if (rc < 0)
        return rc;
    if (sc->op == OP_COMMIT) {
        qcow2_commit_opts co = QCOW2_COMMIT_OPTS_INIT;
        const qcow2_image *base = top;

        for (unsigned d = 0; d < sc->base_depth; d++)
            base = qcow2_image_backing(base);
        cr_assert_not_null(base);
        co.base = base;
        co.keep_top = sc->keep_top;
        rc = qcow2_image_commit(top, &co);
    } else {
        rc = qcow2_image_rebase(top, sc->new_backing, sc->new_format, sc->op == OP_REBASE_UNSAFE,
                                NULL, NULL);
    }
    qcow2_image_close(top);
    return rc;
}

/* Every layer opens and checks clean (leaks allowed); returns the top's view. */
static uint8_t *verify_chain(const struct scenario *sc, memfs *fs, const char *where, uint64_t *size)
{
    for (unsigned i = 0; i < MAX_LAYERS && sc->layers[i]; i++) {
        qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
        qcow2_check_result r;
        qcow2_image *img;
        qcow2_io *io;
        int rc;

        cr_assert_eq(memfs_open(&io, sc->layers[i], 0, fs), 0);
        o.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_CHECK;
        rc = qcow2_image_open_io(&img, io, sc->layers[i], &o);
        cr_assert_eq(rc, 0, "[%s %s] %s does not open: %s", sc->name, where, sc->layers[i], last_msg());
        if (qcow2_image_format(img) == QCOW2_FORMAT_QCOW2) {
            memset(&r, 0, sizeof(r));
            cr_assert_eq(qcow2_image_check(img, 0, &r), 0, "[%s %s] check %s: %s", sc->name, where,
                         sc->layers[i], last_msg());
            cr_assert_eq(r.corruptions, 0, "[%s %s] %s: %" PRIu64 " corruptions", sc->name, where,
                         sc->layers[i], r.corruptions);
        }
        qcow2_image_close(img);
    }
    return read_view(fs, TOP, size);
}

static uint64_t first_diff(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    for (uint64_t i = 0; i < len; i++)
        if (a[i] != b[i])
            return i;
    return len;
}

/*
 * One point: fresh chain, the operation with the N-th write-type call failing
 * (or cutting the power), then the checks. Returns whether the fault fired.
 */
/* After a commit: each sector of the base reads its old content or the top's. */
static void check_base(const struct scenario *sc, memfs *fs, const char *where, const uint8_t *old,
                       uint64_t old_size, const uint8_t *top, uint64_t top_size)
{
    const char *path = sc->layers[sc->base_depth];
    static const uint8_t zero[512];
    uint64_t size;
    uint8_t *view = read_view(fs, path, &size);

    for (uint64_t s = 0; s < size; s += 512) {
        uint64_t n = size - s < 512 ? size - s : 512;
        const uint8_t *o = s < old_size ? old + s : zero;
        bool is_old = s >= old_size || s + n <= old_size ? !memcmp(view + s, o, (size_t)n)
                                                         : false;
        bool is_new = s + n <= top_size && !memcmp(view + s, top + s, (size_t)n);

        cr_assert(is_old || is_new,
                  "[%s %s] base sector at %" PRIu64 " is neither its old content nor the top's",
                  sc->name, where, s);
    }
    free(view);
}

static bool run_point(const struct scenario *sc, uint64_t n, bool crash, uint64_t seed,
                      const uint8_t *before, uint64_t before_size, const uint8_t *after,
                      uint64_t after_size, uint64_t *calls_out)
{
    struct sweep sw = {0};
    uint8_t *view;
    uint64_t size;
    char where[64];
    int rc;

    sw.fs = memfs_new();
    cr_assert_not_null(sw.fs);
    sc->build(sw.fs);
    sw.share = g_share;
    sw.nth = n;
    sw.crash = crash;
    sw.seed = seed;
    rc = run_op(sc, &sw);
    if (g_share && !n)
        cr_assert(sw.clones >= 1 && sw.clones <= g_max_clones,
                  "[%s] %" PRIu64 " clone calls, expected 1 to %" PRIu64, sc->name, sw.clones,
                  g_max_clones);
    if (!sw.fired)
        cr_assert_eq(rc, 0, "[%s N=%" PRIu64 "] failed without a fault: %s", sc->name, n, last_msg());
    if (crash && !sw.crashed)
        power_cut(&sw); /* after a completed run: nothing may be left unflushed */
    end_run(&sw);
    if (calls_out)
        *calls_out = sw.count;

    snprintf(where, sizeof(where), "%s N=%" PRIu64 " seed %" PRIu64, crash ? "crash" : "fail", n, seed);
    view = verify_chain(sc, sw.fs, where, &size);
    if (sc->op == OP_COMMIT)
        check_base(sc, sw.fs, where, g_base_old, g_base_old_size, before, before_size);
    if (sc->op == OP_REBASE_UNSAFE && after && size == after_size &&
        first_diff(view, after, size) == size) {
        /* the new header made it */
    } else if (sc->op == OP_REBASE_UNSAFE && !sw.fired && after) {
        cr_assert_fail("[%s %s] completed, but the top does not read the new content", sc->name, where);
    } else {
        cr_assert_geq(size, before_size, "[%s %s] top shrank", sc->name, where);
        cr_assert_eq(first_diff(view, before, before_size), before_size,
                     "[%s %s] top's content differs at %" PRIu64 " (rc %d)", sc->name, where,
                     first_diff(view, before, before_size), rc);
    }
    free(view);
    memfs_free(sw.fs);
    return sw.fired;
}

static void sweep(const struct scenario *sc, unsigned seeds)
{
    uint8_t *before, *after = NULL;
    uint64_t before_size, after_size = 0, total = 0;
    unsigned fail_points = 0, crash_points = 0;
    memfs *fs = memfs_new();

    cr_assert_not_null(fs);
    sc->build(fs);
    before = read_view(fs, TOP, &before_size);
    if (sc->op == OP_COMMIT)
        g_base_old = read_view(fs, sc->layers[sc->base_depth], &g_base_old_size);
    memfs_free(fs);

    /* An unsafe rebase changes the content: what a clean run makes of it. */
    if (sc->op == OP_REBASE_UNSAFE) {
        struct sweep sw = {0};

        sw.fs = memfs_new();
        cr_assert_not_null(sw.fs);
        sc->build(sw.fs);
        cr_assert_eq(run_op(sc, &sw), 0, "%s", last_msg());
        end_run(&sw);
        after = read_view(sw.fs, TOP, &after_size);
        memfs_free(sw.fs);
    }
    /* A clean run counts the calls. */
    run_point(sc, 0, false, 0, before, before_size, after, after_size, &total);
    cr_assert_gt(total, 0);

    for (uint64_t n = 1;; n++) {
        fail_points++;
        if (!run_point(sc, n, false, 0, before, before_size, after, after_size, NULL))
            break;
        cr_assert_leq(n, total + 10, "[%s] fault still firing past %" PRIu64 " calls", sc->name, total);
    }
    for (uint64_t n = 1;; n++) {
        bool fired = false;

        for (unsigned s = 1; s <= seeds; s++, crash_points++)
            fired = run_point(sc, n, true, n * 100 + s, before, before_size, after, after_size, NULL);
        if (!fired)
            break;
    }
    cr_log_info("[%s] %" PRIu64 " write calls; %u fail points, %u crash points (%u seeds)", sc->name,
                total, fail_points, crash_points, seeds);
    fprintf(stderr, "layer_crash: [%s] %" PRIu64 " write calls, %u fail points, %u crash points\n",
            sc->name, total, fail_points, crash_points);
    free(before);
    free(after);
    free(g_base_old);
    g_base_old = NULL;
}

/* The same sweep with clone_from offered: at most max_clones clone calls in a clean run. */
static void sweep_shared(const struct scenario *sc, unsigned seeds, uint64_t max_clones)
{
    g_share = true;
    g_max_clones = max_clones;
    sweep(sc, seeds);
}

TestSuite(layer_crash, .timeout = 300);

Test(layer_crash, commit_raw_base_grows) { sweep(&scenarios[0], 3); }
Test(layer_crash, commit_keep_top_raw_base) { sweep(&scenarios[1], 2); }
Test(layer_crash, commit_deep_qcow2_relinks_top) { sweep(&scenarios[2], 3); }
Test(layer_crash, commit_deep_v3_top_relinks_top) { sweep(&scenarios[3], 3); }
Test(layer_crash, commit_zstd_base_small_clusters) { sweep(&scenarios[4], 2); }
Test(layer_crash, rebase_safe_keeps_content) { sweep(&scenarios[5], 3); }
Test(layer_crash, rebase_safe_to_no_backing) { sweep(&scenarios[6], 2); }
Test(layer_crash, rebase_unsafe_is_atomic) { sweep(&scenarios[7], 3); }
Test(layer_crash, commit_scattered_qcow2_base) { sweep(&scenarios[8], 2); }
Test(layer_crash, commit_keep_top_scattered_4k_base) { sweep(&scenarios[9], 2); }
/*
 * Shared: 9 top clusters of data go into the 64 KiB base (one compressed:
 * copied) and into the 4 KiB base (16 clusters each); batching keeps the
 * clone calls well under one per base cluster.
 */
Test(layer_crash, shared_commit_scattered_qcow2_base) { sweep_shared(&scenarios[8], 2, 7); }
Test(layer_crash, shared_commit_keep_top_scattered_4k_base) { sweep_shared(&scenarios[9], 2, 9); }
Test(layer_crash, shared_commit_deep_qcow2) { sweep_shared(&scenarios[2], 2, 64); }
Test(layer_crash, shared_commit_raw_base_grows) { sweep_shared(&scenarios[0], 2, 64); }
