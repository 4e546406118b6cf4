/*
 * The in-memory backend (sys/io.h): one growable buffer per file. Tests,
 * fuzzers and benchmarks put whole images in memory with it; the engine
 * reaches it only through the choke point in io.c, like any other backend.
 *
 * Semantics match a POSIX file without holes: reads past the end return
 * zeroes, writes past the end grow the file (the gap reads as zeroes), punch
 * zeroes the range inside the file without changing its size, everything is
 * data (no extent method) and there is no locking. Flush is a no-op.
 *
 * Growth is capped at QCOW2_IO_MEM_MAX_BYTES (4 GiB): a write or resize past
 * it fails with -EFBIG, an allocation failure with -ENOMEM. Fuzzers rely on
 * the cap so that a hostile image cannot make the engine allocate without
 * bound through this backend.
 */
#include <errno.h>

#include "qcow2_int.h"

#ifndef QCOW2_IO_MEM_MAX_BYTES
#define QCOW2_IO_MEM_MAX_BYTES (4ull << 30)
#endif
#define MEM_MIN_CAP (64u << 10)

struct mem_io {
    qcow2_io base; /* must be first */
    uint8_t *buf;  /* cap bytes; [0, len) is the file */
    size_t len;    /* file length, bytes */
    size_t cap;    /* allocated, bytes */
};

static const qcow2_io_ops mem_ops;

static struct mem_io *to_mem(qcow2_io *io)
{
    return (struct mem_io *)io;
}

/* Make room for a file of new_len bytes; newly exposed bytes are zeroed. */
static int mem_grow(struct mem_io *m, uint64_t new_len)
{
    size_t cap;
    uint8_t *nbuf;

    if (new_len > QCOW2_IO_MEM_MAX_BYTES || new_len > SIZE_MAX / 2)
        return -EFBIG;
    if (new_len <= m->len)
        return 0;
    if (new_len > m->cap) {
        cap = m->cap ? m->cap : MEM_MIN_CAP;
        while (cap < new_len)
            cap *= 2;
        if (cap > QCOW2_IO_MEM_MAX_BYTES)
            cap = (size_t)new_len;
        nbuf = qcow2__realloc(m->buf, cap);
        if (!nbuf)
            return -ENOMEM;
        m->buf = nbuf;
        m->cap = cap;
    }
    memset(m->buf + m->len, 0, (size_t)new_len - m->len);
    m->len = (size_t)new_len;
    return 0;
}

static int mem_pread(qcow2_io *io, void *buf, size_t len, uint64_t off)
{
    struct mem_io *m = to_mem(io);
    size_t n = 0;

    if (off < m->len) {
        n = (size_t)qcow2__min(len, m->len - off);
        memcpy(buf, m->buf + off, n);
    }
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

static int mem_pwrite(qcow2_io *io, const void *buf, size_t len, uint64_t off)
{
    struct mem_io *m = to_mem(io);
    uint64_t end;
    int rc;

    if (qcow2__add_overflow(off, len, &end))
        return -EFBIG;
    rc = mem_grow(m, end);
    if (rc)
        return rc;
    if (len)
        memcpy(m->buf + off, buf, len);
    return 0;
}

static int mem_flush(qcow2_io *io)
{
    QCOW2_UNUSED(io);
    return 0;
}

static int mem_truncate(qcow2_io *io, uint64_t size)
{
    struct mem_io *m = to_mem(io);

    if (size <= m->len) {
        m->len = (size_t)size;
        return 0;
    }
    return mem_grow(m, size);
}

static int mem_get_size(qcow2_io *io, uint64_t *size_out)
{
    *size_out = to_mem(io)->len;
    return 0;
}

static int mem_punch(qcow2_io *io, uint64_t off, uint64_t len)
{
    struct mem_io *m = to_mem(io);

    if (off < m->len)
        memset(m->buf + off, 0, (size_t)qcow2__min(len, m->len - off));
    return 0;
}

static int mem_allocated_size(qcow2_io *io, uint64_t *size_out)
{
    *size_out = to_mem(io)->len;
    return 0;
}

static void mem_close(qcow2_io *io)
{
    struct mem_io *m = to_mem(io);

    qcow2__free(m->buf);
    qcow2__free(m);
}

static const qcow2_io_ops mem_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .flush = mem_flush,
    .truncate = mem_truncate,
    .get_size = mem_get_size,
    .punch = mem_punch,
    .extent = NULL,
    .allocated_size = mem_allocated_size,
    .lock = NULL,
    .copy_from = NULL,
    .close = mem_close,
};

int qcow2_io_mem_new(qcow2_io **out, const void *data, size_t len)
{
    struct mem_io *m;
    int rc;

    *out = NULL;
    m = qcow2__calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->base.ops = &mem_ops;
    if (len > QCOW2_IO_MEM_MAX_BYTES) {
        rc = -EFBIG;
        goto out_free;
    }
    /* Allocate up front so that qcow2_io_mem_data() of an empty file is not NULL. */
    m->cap = (size_t)qcow2__max(len, MEM_MIN_CAP);
    m->buf = qcow2__malloc(m->cap);
    if (!m->buf) {
        rc = -ENOMEM;
        goto out_free;
    }
    if (data && len)
        memcpy(m->buf, data, len);
    else if (len)
        memset(m->buf, 0, len);
    m->len = len;
    *out = &m->base;
    return 0;

out_free:
    mem_close(&m->base);
    return rc;
}

const uint8_t *qcow2_io_mem_data(qcow2_io *io, size_t *len_out)
{
    struct mem_io *m;

    if (!io || io->ops != &mem_ops) {
        if (len_out)
            *len_out = 0;
        return NULL;
    }
    m = to_mem(io);
    if (len_out)
        *len_out = m->len;
    return m->buf;
}
