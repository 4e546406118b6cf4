/*
 * The image handle: opening a file as qcow2 or raw, walking its backing
 * chain, the handle's states, info, and close. Callers above are the public
 * API users (cli/, snapshot/); below are header.c (parsing), cluster.c
 * (mapping), refcount.c, snapshot.c, snap_edit.c and the I/O choke point io.c.
 *
 * NOTES ON THE DESIGN: handle states
 *
 *            qcow2_image_open()
 *   CLOSED --------------------> OPEN_RO  (read-only: reads, status, info)
 *      |                            |
 *      | open with QCOW2_OPEN_RDWR  | (never changes to RW)
 *      v                            |
 *   OPEN_RW --(failed metadata write or detected corruption)--> FATAL
 *
 *   OPEN_RO: every metadata structure read so far was validated; no byte of
 *            the file is ever written.
 *   OPEN_RW: the top image only; backing images are always OPEN_RO.
 *   FATAL:   reads still work; every mutating call returns QCOW2_EFATAL until
 *            the handle is closed and the image reopened.
 *
 * A chain is a singly linked list top -> backing -> ... ; each layer owns the
 * next. Loops and chains deeper than opts.max_depth are refused at open.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>

#include "qcow2_int.h"

/* Names of the layers opened so far on the way down, to detect loops. */
struct chain_ctx {
    char *seen[QCOW2_MAX_CHAIN_DEPTH + 1]; /* canonical names, top first */
    unsigned nb_seen;
    struct qcow2__pool *pool; /* table memory for every layer of the chain */
    char dir[PATH_MAX];       /* the last backing file's directory, as named */
    char dir_canon[PATH_MAX]; /* and resolved; dir[0] == 0: none yet */
};

const char *qcow2_format_name(qcow2_format fmt)
{
    switch (fmt) {
    case QCOW2_FORMAT_RAW:
        return "raw";
    case QCOW2_FORMAT_QCOW2:
        return "qcow2";
    case QCOW2_FORMAT_AUTO:
        break;
    }
    return NULL;
}

qcow2_format qcow2_format_from_name(const char *name)
{
    if (name && strcmp(name, "raw") == 0)
        return QCOW2_FORMAT_RAW;
    if (name && strcmp(name, "qcow2") == 0)
        return QCOW2_FORMAT_QCOW2;
    return QCOW2_FORMAT_AUTO;
}

static int default_open(qcow2_io **out, const char *path, unsigned flags, void *payload)
{
    QCOW2_UNUSED(payload);
    return qcow2_io_posix_open(out, path, flags);
}

/* A canonical name for loop detection: realpath when the file system knows it. */
/*
 * name with "." and empty components dropped and "dir/.." pairs folded, by
 * text alone (for names realpath cannot resolve, such as a custom open_fn's).
 */
static char *lexical_name(const char *name)
{
    size_t n = strlen(name), o = 0;
    char *out = qcow2__malloc(n + 2);
    const char *p = name;

    if (!out)
        return NULL;
    if (*p == '/')
        out[o++] = '/';
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.' && o > 0 &&
            !(o >= 2 && out[o - 1] == '.' && out[o - 2] == '.' && (o == 2 || out[o - 3] == '/')) &&
            !(o == 1 && out[0] == '/')) {
            /* Drop the last component. */
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0 && !(o == 1 && out[0] == '/'))
                o--;
        } else if (len && !(len == 1 && p[0] == '.')) {
            if (o > 0 && out[o - 1] != '/')
                out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p += len + (e ? 1 : 0);
    }
    out[o] = '\0';
    return out;
}

static char *canonical_name(const qcow2_image *img, const char *name)
{
    char buf[PATH_MAX];

    if (!img->opts.open_fn && realpath(name, buf))
        return qcow2__strdup(buf);
    return lexical_name(name);
}

/*
 * canonical_name() for the next layer of a chain being opened. The layers
 * of a chain usually share a directory: it is resolved once (realpath), and
 * a name in it that is not a symbolic link resolves to that directory plus
 * the name (one lstat instead of a readlink per path component). Anything
 * else takes the full way.
 */
static char *canonical_in_chain(struct chain_ctx *ctx, const qcow2_image *img, const char *name)
{
    const char *slash = strrchr(name, '/'), *base = slash ? slash + 1 : name;
    size_t dir_len = slash ? (size_t)(slash - name) : 0, canon_len, base_len = strlen(base);
    struct stat st;
    char *out;

    if (img->opts.open_fn || !*base || !strcmp(base, ".") || !strcmp(base, "..") ||
        dir_len >= sizeof(ctx->dir) || (slash && dir_len == 0))
        return canonical_name(img, name);
    if (!ctx->dir[0] || strlen(ctx->dir) != (slash ? dir_len : 1) ||
        memcmp(ctx->dir, slash ? name : ".", slash ? dir_len : 1) != 0) {
        memcpy(ctx->dir, slash ? name : ".", slash ? dir_len : 1);
        ctx->dir[slash ? dir_len : 1] = '\0';
        if (!realpath(ctx->dir, ctx->dir_canon)) {
            ctx->dir[0] = '\0';
            return canonical_name(img, name);
        }
    }
    if (lstat(name, &st) != 0 || S_ISLNK(st.st_mode))
        return canonical_name(img, name);
    canon_len = strlen(ctx->dir_canon);
    out = qcow2__malloc(canon_len + 1 + base_len + 1);
    if (out) {
        memcpy(out, ctx->dir_canon, canon_len);
        if (canon_len != 1) /* "/" already ends in a slash */
            out[canon_len++] = '/';
        memcpy(out + canon_len, base, base_len + 1);
    }
    return out;
}

/*
 * True when a backing name is not a plain path: "json:{...}", "nbd://host",
 * "file:x" and other "protocol:" prefixes (letters, digits, '+', '-', '.'
 * before the first ':' and before any '/').
 */
static bool is_protocol_name(const char *name)
{
    const char *p = name;

    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        return false;
    for (; *p && *p != '/'; p++) {
        if (*p == ':')
            return true;
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '+' || *p == '-' || *p == '.' || *p == '_'))
            return false;
    }
    return false;
}

/* Resolve a relative backing name against the directory of the image naming it. */
static char *resolve_backing(const char *image_name, const char *backing)
{
    const char *slash = strrchr(image_name, '/');
    size_t dir_len, len;
    char *path;

    if (backing[0] == '/' || !slash)
        return qcow2__strdup(backing);
    dir_len = (size_t)(slash - image_name) + 1;
    len = dir_len + strlen(backing);
    path = qcow2__malloc(len + 1);
    if (path) {
        memcpy(path, image_name, dir_len);
        strcpy(path + dir_len, backing);
    }
    return path;
}

static void image_free(qcow2_image *img)
{
    if (!img)
        return;
    if (img->backing)
        image_free(img->backing);
    if (img->fmt != QCOW2_FORMAT_QCOW2 || img->l2c.slots)
        qcow2__close_flush(img); /* errors are reported by an explicit qcow2_image_flush() */
    qcow2__l2_cache_free(img);
    qcow2__cmap_free(img);
    qcow2__snapshots_free(img);
    qcow2__header_free(img);
    qcow2__free(img->l1);
    qcow2__free(img->reftable);
    qcow2__free(img->cbuf);
    qcow2__free(img->dbuf);
    qcow2__free(img->pending);
    qcow2__free(img->raw_runs);
    if (img->io) {
        if (img->locked)
            img->io->ops->lock(img->io, QCOW2_IO_UNLOCK);
        qcow2_io_close(img->io);
    }
    qcow2__free(img->backing_path);
    qcow2__free(img->name);
    qcow2__pool_unref(img->pool);
    qcow2__free(img);
}

static int load_l1(qcow2_image *img)
{
    uint64_t n = img->hdr.l1_size;
    uint8_t *raw;
    int rc;

    img->l1_alloc = n;
    img->l1 = qcow2__calloc((size_t)qcow2__max(n, 1), sizeof(uint64_t));
    if (!img->l1)
        return qcow2__nomem();
    if (n == 0)
        return 0;
    raw = (uint8_t *)img->l1;
    rc = qcow2__io_read(img->io, img->name, raw, (size_t)(n * 8), img->hdr.l1_off);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < n; i++)
        img->l1[i] = qcow2__be64(raw + i * 8);
    return 0;
}

static int open_qcow2(qcow2_image *img)
{
    uint8_t *cluster0 = NULL;
    size_t head_len, c0_len;
    uint32_t cluster_bits;
    int rc;

    /*
     * Cluster 0 holds the header, its extensions and the backing name. One
     * read of the first 64 KiB finds the cluster size and, for clusters up
     * to 64 KiB, all of cluster 0; larger clusters read the rest after.
     */
    head_len = (size_t)qcow2__min(64u << 10, img->file_size);
    cluster0 = qcow2__malloc(qcow2__max(head_len, QCOW2_V3_HEADER_LEN));
    if (!cluster0)
        return qcow2__nomem();
    rc = qcow2__io_read(img->io, img->name, cluster0, head_len, 0);
    if (rc)
        goto out;
    if (head_len < QCOW2_V2_HEADER_LEN) {
        rc = qcow2__corrupt(img, "file is too short for a qcow2 header (%zu bytes)", head_len);
        goto out;
    }
    if (qcow2__be32(cluster0) != QCOW2_MAGIC) {
        rc = qcow2__corrupt(img, "bad magic: not a qcow2 image");
        goto out;
    }
    cluster_bits = qcow2__be32(cluster0 + 20);
    if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        rc = qcow2__corrupt(img, "cluster_bits %" PRIu32 " is outside 9..21", cluster_bits);
        goto out;
    }
    c0_len = (size_t)qcow2__min(1ull << cluster_bits, img->file_size);
    if (c0_len > head_len) {
        uint8_t *bigger = qcow2__realloc(cluster0, c0_len);
        if (!bigger) {
            rc = qcow2__nomem();
            goto out;
        }
        cluster0 = bigger;
        rc = qcow2__io_read(img->io, img->name, cluster0 + head_len, c0_len - head_len, head_len);
        if (rc)
            goto out;
    }
    rc = qcow2__header_parse(img, cluster0, c0_len);
    if (rc)
        goto out;
    rc = load_l1(img);
    if (rc)
        goto out;
    rc = qcow2__refcount_load(img);
    if (rc)
        goto out;
    rc = qcow2__snapshots_load(img);
    if (rc)
        goto out;
    rc = qcow2__l2_cache_init(img);
out:
    qcow2__free(cluster0);
    return rc;
}

static int probe_format(qcow2_image *img, qcow2_format *fmt_out)
{
    uint8_t magic[4] = {0, 0, 0, 0};
    int rc;

    if (img->file_size >= 4) {
        rc = qcow2__io_read(img->io, img->name, magic, 4, 0);
        if (rc)
            return rc;
    }
    *fmt_out = qcow2__be32(magic) == QCOW2_MAGIC ? QCOW2_FORMAT_QCOW2 : QCOW2_FORMAT_RAW;
    return 0;
}

static int open_layer(qcow2_image **out, qcow2_io *io, const char *name, const qcow2_open_opts *opts,
                      qcow2_format fmt, unsigned depth, struct chain_ctx *ctx);

static int open_backing(qcow2_image *img, struct chain_ctx *ctx)
{
    qcow2_format fmt = QCOW2_FORMAT_AUTO;
    qcow2_io_open_fn open_fn = img->opts.open_fn ? img->opts.open_fn : default_open;
    unsigned max_depth = img->opts.max_depth && img->opts.max_depth < QCOW2_MAX_CHAIN_DEPTH
                             ? img->opts.max_depth
                             : QCOW2_MAX_CHAIN_DEPTH; /* the option can lower the cap, not raise it */
    qcow2_open_opts bopts = img->opts;
    qcow2_io *io = NULL;
    char *canon;
    int rc;

    if (img->backing_name[0] == '\0')
        return qcow2__corrupt(img, "backing file name is empty");
    if (is_protocol_name(img->backing_name))
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "backing file '%s' is not a plain file path (protocol and json: names "
                          "are refused)",
                          img->backing_name);
    if (img->backing_fmt) {
        fmt = qcow2_format_from_name(img->backing_fmt);
        if (fmt == QCOW2_FORMAT_AUTO)
            return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                              "backing file format '%s' is not supported", img->backing_fmt);
    }
    if (img->depth + 1 >= max_depth)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "backing chain is deeper than %u images", max_depth);
    canon = canonical_in_chain(ctx, img, img->backing_path);
    if (!canon)
        return qcow2__nomem();
    for (unsigned i = 0; i < ctx->nb_seen; i++) {
        if (strcmp(ctx->seen[i], canon) == 0) {
            qcow2__free(canon);
            /* qemu-img's words (scripts compare them); the name is the repeated file's. */
            return qcow2__err(QCOW2_ECORRUPT, 0, NULL, "Backing file '%s' creates an infinite loop.",
                              img->backing_path);
        }
    }
    ctx->seen[ctx->nb_seen++] = canon;

    /* The chain below the top is always read-only. */
    bopts.flags &= ~(unsigned)QCOW2_OPEN_RDWR;
    if (img->depth + 1 >= 2)
        qcow2__pool_deep(ctx->pool);
    rc = open_fn(&io, img->backing_path, 0, img->opts.open_payload);
    if (rc < 0) {
        char what[64 + QCOW2_MAX_BACKING_NAME];
        snprintf(what, sizeof(what), "cannot open backing file '%s'", img->backing_path);
        return qcow2__io_error(rc, img->name, what);
    }
    return open_layer(&img->backing, io, img->backing_path, &bopts, fmt, img->depth + 1, ctx);
}

/* Open one layer from io (owned from here on) and, unless told not to, the chain below it. */
static int open_layer(qcow2_image **out, qcow2_io *io, const char *name, const qcow2_open_opts *opts,
                      qcow2_format fmt, unsigned depth, struct chain_ctx *ctx)
{
    qcow2_image *img;
    int rc;

    *out = NULL;
    img = qcow2__calloc(1, sizeof(*img));
    if (!img) {
        qcow2_io_close(io);
        return qcow2__nomem();
    }
    img->io = io;
    img->depth = depth;
    img->pool = qcow2__pool_ref(ctx->pool);
    img->dbuf_host_off = UINT64_MAX;
    img->opts = *opts;
    img->state = (opts->flags & QCOW2_OPEN_RDWR) ? QCOW2__OPEN_RW : QCOW2__OPEN_RO;
    img->name = qcow2__strdup(name);
    if (!img->name) {
        rc = qcow2__nomem();
        goto out_free;
    }
    rc = qcow2__io_size(io, img->name, &img->file_size);
    if (rc)
        goto out_free;
    if (!(opts->flags & QCOW2_OPEN_NO_LOCK)) {
        rc = qcow2__io_lock(io, img->name,
                            img->state == QCOW2__OPEN_RW ? QCOW2_IO_LOCK_WRITE : QCOW2_IO_LOCK_READ);
        if (rc)
            goto out_free;
        img->locked = io->ops->lock != NULL;
    }
    if (fmt == QCOW2_FORMAT_AUTO) {
        rc = probe_format(img, &fmt);
        if (rc)
            goto out_free;
    }
    img->fmt = fmt;
    if (fmt == QCOW2_FORMAT_QCOW2) {
        rc = open_qcow2(img);
        if (rc)
            goto out_free;
        /* Lazy refcounts: a dirty image's refcounts are rebuilt before any write (check.c). */
        if (img->state == QCOW2__OPEN_RW && (img->hdr.incompat & QCOW2_INCOMPAT_DIRTY) &&
            !(opts->flags & QCOW2_OPEN_CHECK)) {
            rc = qcow2__repair_dirty(img);
            if (rc)
                goto out_free;
        }
    } else {
        /* qemu sees a raw file in whole sectors: the partial tail reads as zeroes. */
        img->size = qcow2__align_up(img->file_size, 512);
    }
    if (img->backing_name) {
        img->backing_path = resolve_backing(img->name, img->backing_name);
        if (!img->backing_path) {
            rc = qcow2__nomem();
            goto out_free;
        }
    }
    if (img->backing_name && !(opts->flags & QCOW2_OPEN_NO_BACKING)) {
        rc = open_backing(img, ctx);
        if (rc)
            goto out_free;
    }
    *out = img;
    return 0;
out_free:
    image_free(img);
    return rc;
}

static int open_io_common(qcow2_image **out, qcow2_io *io, const char *name,
                          const qcow2_open_opts *opts)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    struct chain_ctx ctx;
    int rc;

    if (opts) {
        if (opts->version != QCOW2_OPEN_OPTS_VERSION) {
            qcow2_io_close(io);
            return qcow2__err(QCOW2_EINVAL, 0, name, "unknown open options version %u",
                              opts->version);
        }
        o = *opts;
    }
    if (o.format != QCOW2_FORMAT_AUTO && !qcow2_format_name(o.format)) {
        qcow2_io_close(io);
        return qcow2__err(QCOW2_EINVAL, 0, name, "unknown image format %d", (int)o.format);
    }
    ctx.nb_seen = 0;
    ctx.pool = NULL;
    ctx.dir[0] = '\0';
    ctx.seen[0] = NULL;
    rc = 0;
    {
        qcow2_image tmp;
        memset(&tmp, 0, sizeof(tmp));
        tmp.opts = o;
        ctx.seen[0] = canonical_name(&tmp, name);
        if (!ctx.seen[0]) {
            qcow2_io_close(io);
            return qcow2__nomem();
        }
        ctx.nb_seen = 1;
    }
    rc = qcow2__pool_new(&ctx.pool);
    if (rc)
        qcow2_io_close(io);
    else
        rc = open_layer(out, io, name, &o, o.format, 0, &ctx);
    qcow2__pool_unref(ctx.pool); /* each layer holds its own reference */
    for (unsigned i = 0; i < ctx.nb_seen; i++)
        qcow2__free(ctx.seen[i]);
    return rc;
}

int qcow2_image_open_io(qcow2_image **out, qcow2_io *io, const char *name,
                        const qcow2_open_opts *opts)
{
    if (!out || !io || !name) {
        qcow2_io_close(io);
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "qcow2_image_open_io: missing argument");
    }
    return open_io_common(out, io, name, opts);
}

int qcow2_image_open(qcow2_image **out, const char *path, const qcow2_open_opts *opts)
{
    qcow2_io_open_fn open_fn;
    void *payload;
    qcow2_io *io = NULL;
    struct stat st;
    unsigned flags;
    int rc;

    if (!out || !path)
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "qcow2_image_open: missing argument");
    *out = NULL;
    open_fn = opts && opts->open_fn ? opts->open_fn : default_open;
    payload = opts ? opts->open_payload : NULL;
    flags = opts && (opts->flags & QCOW2_OPEN_RDWR) ? QCOW2_IO_RDWR : 0;
    if (!(opts && opts->open_fn) && stat(path, &st) == 0 && !S_ISREG(st.st_mode) &&
        !S_ISBLK(st.st_mode))
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, path, "not a regular file or block device");
    rc = open_fn(&io, path, flags, payload);
    if (rc < 0)
        return qcow2__io_error(rc, path, "cannot open");
    return open_io_common(out, io, path, opts);
}

void qcow2_image_close(qcow2_image *img)
{
    image_free(img);
}

uint64_t qcow2_image_size(const qcow2_image *img)
{
    return img->size;
}

qcow2_format qcow2_image_format(const qcow2_image *img)
{
    return img->fmt;
}

const char *qcow2_image_filename(const qcow2_image *img)
{
    return img->name;
}

qcow2_image *qcow2_image_backing(const qcow2_image *img)
{
    return img->backing;
}

unsigned qcow2_image_chain_length(const qcow2_image *img)
{
    unsigned n = 0;

    for (; img; img = img->backing)
        n++;
    return n;
}

int qcow2_image_get_info(const qcow2_image *img, qcow2_info *out)
{
    uint64_t alloc = 0;

    memset(out, 0, sizeof(*out));
    out->format = img->fmt;
    out->filename = img->name;
    out->virtual_size = img->size;
    out->file_size = img->file_size;
    if (qcow2__io_allocated(img->io, img->name, &alloc) == 0)
        out->actual_size = alloc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return 0;
    out->cluster_size = (uint32_t)img->cluster_size;
    out->qcow2_version = img->hdr.version;
    out->refcount_bits = img->refcount_bits;
    out->compression_type = img->hdr.compression_type;
    out->lazy_refcounts = (img->hdr.compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    out->dirty = (img->hdr.incompat & QCOW2_INCOMPAT_DIRTY) != 0;
    out->corrupt = (img->hdr.incompat & QCOW2_INCOMPAT_CORRUPT) != 0;
    out->extended_l2 = img->extl2;
    out->incompatible_features = img->hdr.incompat;
    out->compatible_features = img->hdr.compat;
    out->autoclear_features = img->hdr.autoclear;
    out->backing_name = img->backing_name;
    out->backing_format = img->backing_fmt;
    out->backing_path = img->backing_path ? img->backing_path
                                          : (img->backing_name ? img->backing_name : NULL);
    out->nb_snapshots = img->nb_snaps;
    out->nb_bitmaps = img->nb_bitmaps;
    return 0;
}

/* ---- helpers for layer operations (layer.c) ------------------------------ */

void qcow2__image_free(qcow2_image *img)
{
    image_free(img);
}

char *qcow2__resolve_backing(const char *image_name, const char *backing)
{
    return resolve_backing(image_name, backing);
}

/* The directory part of a path ("." when there is none), canonical when possible. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char buf[PATH_MAX];
    char *dir = slash ? qcow2__strndup(path, (size_t)(slash - path) + (slash == path)) : qcow2__strdup(".");

    if (dir && realpath(dir, buf)) {
        qcow2__free(dir);
        dir = qcow2__strdup(buf);
    }
    return dir;
}

/*
 * A name for target_path as a backing link stored in the image at
 * image_name: relative to that image's directory, so that images that move
 * together keep working. Falls back to target_path as given.
 */
char *qcow2__relative_name(const char *image_name, const char *target_path)
{
    char *from = dir_of(image_name), *to_dir = dir_of(target_path);
    const char *base = strrchr(target_path, '/');
    char *out = NULL;
    size_t common = 0, ups = 0, len;

    base = base ? base + 1 : target_path;
    if (!from || !to_dir || from[0] != '/' || to_dir[0] != '/') {
        out = qcow2__strdup(target_path);
        goto done;
    }
    /* Longest common prefix ending at a path component boundary. */
    for (size_t i = 0;; i++) {
        if ((from[i] == '/' || from[i] == '\0') && (to_dir[i] == '/' || to_dir[i] == '\0'))
            common = i;
        if (from[i] == '\0' || to_dir[i] == '\0' || from[i] != to_dir[i])
            break;
    }
    for (const char *p = from + common; *p; p++)
        ups += *p == '/';
    len = ups * 3 + strlen(to_dir + common) + strlen(base) + 2;
    out = qcow2__malloc(len);
    if (out) {
        size_t n = 0;
        const char *rest = to_dir + common;
        for (size_t i = 0; i < ups; i++) {
            memcpy(out + n, "../", 3);
            n += 3;
        }
        if (*rest == '/')
            rest++;
        if (*rest) {
            n += (size_t)snprintf(out + n, len - n, "%s/", rest);
        }
        snprintf(out + n, len - n, "%s", base);
    }
done:
    qcow2__free(from);
    qcow2__free(to_dir);
    return out;
}

/* Canonical identity of a file for loop checks (realpath, or the name). */
char *qcow2__canonical_name(const qcow2_image *img)
{
    return canonical_name(img, img->name);
}

/*
 * Reopen one layer of a chain for writing (commit into a backing file):
 * a new read-write handle on the same file replaces the read-only one, and
 * the image lock is upgraded. On failure the layer stays as it was.
 */
int qcow2__reopen(qcow2_image *img, bool rw)
{
    qcow2_io_open_fn open_fn = img->opts.open_fn ? img->opts.open_fn : default_open;
    bool want_lock = !(img->opts.flags & QCOW2_OPEN_NO_LOCK) && img->io->ops->lock;
    qcow2_io *io = NULL;
    /* A reader's caches are sized by the tables it had (cluster.c); a writer's tables can
     * grow: the writer's are made first, so that a failure leaves the image as it was. */
    struct qcow2__cache l2 = {0}, rb = {0};
    bool new_caches = rw && img->fmt == QCOW2_FORMAT_QCOW2;
    int rc;

    if ((img->state == QCOW2__OPEN_RW) == rw)
        return 0;
    if (!rw) {
        rc = qcow2__close_flush(img);
        if (rc)
            return rc;
    }
    if (new_caches) {
        rc = qcow2__l2_cache_make(img, false, &l2, &rb);
        if (rc)
            return rc;
    }
    if (img->locked)
        img->io->ops->lock(img->io, QCOW2_IO_UNLOCK);
    rc = open_fn(&io, img->name, rw ? QCOW2_IO_RDWR : 0, img->opts.open_payload);
    if (rc < 0) {
        rc = qcow2__io_error(rc, img->name, rw ? "cannot open for writing" : "cannot reopen");
        goto out_relock;
    }
    /* The name must still be the file that was opened: a rename or a link put
     * there meanwhile is not written through. */
    if (qcow2__io_same_file(img->io, io) == 0) {
        qcow2_io_close(io);
        rc = qcow2__io_error(-ESTALE, img->name, "was replaced while open; not reopened");
        goto out_relock;
    }
    if (want_lock) {
        rc = qcow2__io_lock(io, img->name, rw ? QCOW2_IO_LOCK_WRITE : QCOW2_IO_LOCK_READ);
        if (rc) {
            qcow2_io_close(io);
            goto out_relock;
        }
    }
    qcow2_io_close(img->io);
    img->io = io;
    img->locked = want_lock;
    img->state = rw ? QCOW2__OPEN_RW : QCOW2__OPEN_RO;
    img->write_started = false;
    img->share_refused = NULL;
    if (new_caches) { /* a reader's caches hold only clean tables */
        qcow2__l2_cache_free(img);
        img->l2c = l2;
        img->rbc = rb;
    }
    if (rw) {
        img->opts.flags |= QCOW2_OPEN_RDWR;
        if (img->fmt == QCOW2_FORMAT_QCOW2 && (img->hdr.incompat & QCOW2_INCOMPAT_DIRTY))
            return qcow2__repair_dirty(img);
    } else {
        img->opts.flags &= ~(unsigned)QCOW2_OPEN_RDWR;
    }
    return 0;
out_relock:
    if (img->locked)
        img->io->ops->lock(img->io, rw ? QCOW2_IO_LOCK_READ : QCOW2_IO_LOCK_WRITE);
    if (new_caches) {
        qcow2__cache_free(&l2);
        qcow2__cache_free(&rb);
    }
    return rc;
}
