/*
 * memfs: named in-memory files for tests and fuzzers (see memfs.h). Each
 * file's bytes are an io_mem backend (qcow2/io_mem.c); an open handle is a
 * thin backend that forwards to it, checks the access mode and emulates the
 * image lock per file.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "memfs.h"

struct memfs_node {
    struct memfs_node *next;
    char *path;          /* normalised */
    qcow2_io *mem;       /* the bytes (io_mem) */
    bool unlinked;       /* removed from the namespace; freed with the fs */
    unsigned nb_readers; /* handles holding a READ lock */
    unsigned nb_writers; /* handles holding a WRITE lock */
};

struct memfs {
    struct memfs_node *nodes;
};

struct memfs_handle {
    qcow2_io base; /* must be first */
    struct memfs_node *node;
    bool rdwr;
    qcow2_io_lock_mode lock;
};

/* "a//b/./c/../d" -> "a/b/d"; a leading '/' is kept. Returns malloc'ed or NULL. */
static char *normalise(const char *path)
{
    size_t len = strlen(path);
    char *out = malloc(len + 2);
    size_t o = 0;
    const char *p = path;

    if (!out)
        return NULL;
    if (*p == '/')
        out[o++] = '/';
    while (*p) {
        const char *seg;
        size_t n;

        while (*p == '/')
            p++;
        seg = p;
        while (*p && *p != '/')
            p++;
        n = (size_t)(p - seg);
        if (n == 0 || (n == 1 && seg[0] == '.'))
            continue;
        if (n == 2 && seg[0] == '.' && seg[1] == '.') {
            size_t root = out[0] == '/' ? 1 : 0;
            if (o > root) {
                while (o > root && out[o - 1] != '/')
                    o--;
                if (o > root)
                    o--; /* the separator */
                continue;
            }
            if (root)
                continue; /* "/.." is "/" */
        }
        if (o > 0 && out[o - 1] != '/')
            out[o++] = '/';
        memcpy(out + o, seg, n);
        o += n;
    }
    out[o] = '\0';
    return out;
}

static struct memfs_node *lookup(memfs *fs, const char *path)
{
    struct memfs_node *n;
    char *norm = normalise(path);

    if (!norm)
        return NULL;
    for (n = fs->nodes; n; n = n->next) {
        if (!n->unlinked && strcmp(n->path, norm) == 0)
            break;
    }
    free(norm);
    return n;
}

static int node_new(memfs *fs, const char *path, const void *data, size_t len,
                    struct memfs_node **out)
{
    struct memfs_node *n;
    int rc;

    if (len > MEMFS_MAX_FILE_BYTES)
        return -EFBIG;
    n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->path = normalise(path);
    if (!n->path) {
        free(n);
        return -ENOMEM;
    }
    rc = qcow2_io_mem_new(&n->mem, data, len);
    if (rc) {
        free(n->path);
        free(n);
        return rc;
    }
    n->next = fs->nodes;
    fs->nodes = n;
    *out = n;
    return 0;
}

/* Replace the bytes of an existing file in place, so open handles see them. */
static int node_replace(struct memfs_node *n, const void *data, size_t len)
{
    int rc;

    if (len > MEMFS_MAX_FILE_BYTES)
        return -EFBIG;
    rc = n->mem->ops->truncate(n->mem, 0);
    if (rc == 0 && len)
        rc = n->mem->ops->pwrite(n->mem, data, len, 0);
    return rc;
}

memfs *memfs_new(void)
{
    return calloc(1, sizeof(memfs));
}

void memfs_free(memfs *fs)
{
    struct memfs_node *n, *next;

    if (!fs)
        return;
    for (n = fs->nodes; n; n = next) {
        next = n->next;
        qcow2_io_close(n->mem);
        free(n->path);
        free(n);
    }
    free(fs);
}

int memfs_put(memfs *fs, const char *path, const void *data, size_t len)
{
    struct memfs_node *n = lookup(fs, path);

    if (n)
        return node_replace(n, data, len);
    return node_new(fs, path, data, len, &n);
}

const uint8_t *memfs_get(memfs *fs, const char *path, size_t *len_out)
{
    struct memfs_node *n = lookup(fs, path);

    if (!n) {
        if (len_out)
            *len_out = 0;
        return NULL;
    }
    return qcow2_io_mem_data(n->mem, len_out);
}

bool memfs_exists(memfs *fs, const char *path)
{
    return lookup(fs, path) != NULL;
}

int memfs_remove(memfs *fs, const char *path)
{
    struct memfs_node *n = lookup(fs, path);

    if (!n)
        return -ENOENT;
    n->unlinked = true;
    return 0;
}

/* ---- the handle backend ---------------------------------------------------- */

static struct memfs_handle *to_handle(qcow2_io *io)
{
    return (struct memfs_handle *)io;
}

static qcow2_io *inner(qcow2_io *io)
{
    return to_handle(io)->node->mem;
}

static int h_pread(qcow2_io *io, void *buf, size_t len, uint64_t off)
{
    return inner(io)->ops->pread(inner(io), buf, len, off);
}

static int h_pwrite(qcow2_io *io, const void *buf, size_t len, uint64_t off)
{
    if (!to_handle(io)->rdwr)
        return -EBADF;
    if (off > MEMFS_MAX_FILE_BYTES || len > MEMFS_MAX_FILE_BYTES - off)
        return -EFBIG;
    return inner(io)->ops->pwrite(inner(io), buf, len, off);
}

static int h_flush(qcow2_io *io)
{
    return inner(io)->ops->flush(inner(io));
}

static int h_truncate(qcow2_io *io, uint64_t size)
{
    if (!to_handle(io)->rdwr)
        return -EBADF;
    if (size > MEMFS_MAX_FILE_BYTES)
        return -EFBIG;
    return inner(io)->ops->truncate(inner(io), size);
}

static int h_get_size(qcow2_io *io, uint64_t *size_out)
{
    return inner(io)->ops->get_size(inner(io), size_out);
}

static int h_punch(qcow2_io *io, uint64_t off, uint64_t len)
{
    if (!to_handle(io)->rdwr)
        return -EBADF;
    return inner(io)->ops->punch(inner(io), off, len);
}

static int h_allocated_size(qcow2_io *io, uint64_t *size_out)
{
    return inner(io)->ops->allocated_size(inner(io), size_out);
}

static void lock_drop(struct memfs_handle *h)
{
    if (h->lock == QCOW2_IO_LOCK_READ)
        h->node->nb_readers--;
    else if (h->lock == QCOW2_IO_LOCK_WRITE)
        h->node->nb_writers--;
    h->lock = QCOW2_IO_UNLOCK;
}

static int h_lock(qcow2_io *io, qcow2_io_lock_mode mode)
{
    struct memfs_handle *h = to_handle(io);
    struct memfs_node *n = h->node;
    unsigned others_r = n->nb_readers - (h->lock == QCOW2_IO_LOCK_READ);
    unsigned others_w = n->nb_writers - (h->lock == QCOW2_IO_LOCK_WRITE);

    switch (mode) {
    case QCOW2_IO_UNLOCK:
        lock_drop(h);
        return 0;
    case QCOW2_IO_LOCK_READ:
        if (others_w)
            return -EAGAIN;
        lock_drop(h);
        n->nb_readers++;
        break;
    case QCOW2_IO_LOCK_WRITE:
        if (others_w || others_r)
            return -EAGAIN;
        lock_drop(h);
        n->nb_writers++;
        break;
    default:
        return -EINVAL;
    }
    h->lock = mode;
    return 0;
}

static void h_close(qcow2_io *io)
{
    struct memfs_handle *h = to_handle(io);

    lock_drop(h);
    free(h);
}

static const qcow2_io_ops memfs_handle_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = h_pread,
    .pwrite = h_pwrite,
    .flush = h_flush,
    .truncate = h_truncate,
    .get_size = h_get_size,
    .punch = h_punch,
    .extent = NULL,
    .allocated_size = h_allocated_size,
    .lock = h_lock,
    .copy_from = NULL,
    .close = h_close,
};

int memfs_open(qcow2_io **out, const char *path, unsigned flags, void *payload)
{
    memfs *fs = payload;
    struct memfs_node *n;
    struct memfs_handle *h;
    int rc;

    *out = NULL;
    n = lookup(fs, path);
    if (flags & QCOW2_IO_CREATE) {
        if (n && !(flags & QCOW2_IO_TRUNC))
            return -EEXIST;
        if (n)
            rc = node_replace(n, NULL, 0);
        else
            rc = node_new(fs, path, NULL, 0, &n);
        if (rc)
            return rc;
        flags |= QCOW2_IO_RDWR;
    } else if (!n) {
        return -ENOENT;
    } else if ((flags & QCOW2_IO_TRUNC) && (flags & QCOW2_IO_RDWR)) {
        rc = node_replace(n, NULL, 0);
        if (rc)
            return rc;
    }
    h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->base.ops = &memfs_handle_ops;
    h->node = n;
    h->rdwr = (flags & QCOW2_IO_RDWR) != 0;
    h->lock = QCOW2_IO_UNLOCK;
    *out = &h->base;
    return 0;
}
