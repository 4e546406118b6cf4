/* reader_fixture: helpers for the reader suites (see reader_fixture.h). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "reader_fixture.h"

int rfx_create(memfs *fs, const char *path, const qcow2_create_opts *co)
{
    qcow2_create_opts o = *co;
    qcow2_io *io = NULL;
    int rc;

    o.open_fn = memfs_open;
    o.open_payload = fs;
    rc = memfs_open(&io, path, QCOW2_IO_CREATE | QCOW2_IO_TRUNC | QCOW2_IO_RDWR, fs);
    if (rc)
        return QCOW2_EIO;
    rc = qcow2_image_create_io(io, path, &o);
    qcow2_io_close(io);
    return rc;
}

int rfx_create_simple(memfs *fs, const char *path, uint64_t size, uint32_t cluster_size)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    co.size = size;
    co.cluster_size = cluster_size;
    return rfx_create(fs, path, &co);
}

int rfx_open_opts(memfs *fs, const char *path, qcow2_open_opts *o, qcow2_image **out)
{
    qcow2_io *io = NULL;
    int rc;

    o->open_fn = memfs_open;
    o->open_payload = fs;
    *out = NULL;
    rc = memfs_open(&io, path, (o->flags & QCOW2_OPEN_RDWR) ? QCOW2_IO_RDWR : 0, fs);
    if (rc)
        return QCOW2_ENOTFOUND;
    return qcow2_image_open_io(out, io, path, o);
}

int rfx_open(memfs *fs, const char *path, unsigned flags, uint64_t cache_bytes, qcow2_image **out)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;

    o.flags = flags;
    o.cache_bytes = cache_bytes;
    return rfx_open_opts(fs, path, &o, out);
}

int rfx_write(memfs *fs, const char *path, uint64_t off, const void *buf, size_t len)
{
    qcow2_image *img;
    int rc = rfx_open(fs, path, QCOW2_OPEN_RDWR, 0, &img);

    if (rc)
        return rc;
    rc = qcow2_image_write(img, buf, len, off);
    if (!rc)
        rc = qcow2_image_flush(img);
    qcow2_image_close(img);
    return rc;
}

int rfx_fill(memfs *fs, const char *path, uint64_t off, size_t len, int pattern)
{
    void *buf = malloc(len ? len : 1);
    int rc;

    if (!buf)
        return QCOW2_ENOMEM;
    memset(buf, pattern, len);
    rc = rfx_write(fs, path, off, buf, len);
    free(buf);
    return rc;
}

int rfx_zero(memfs *fs, const char *path, uint64_t off, uint64_t len, unsigned flags)
{
    qcow2_image *img;
    int rc = rfx_open(fs, path, QCOW2_OPEN_RDWR, 0, &img);

    if (rc)
        return rc;
    rc = qcow2_image_write_zeroes(img, off, len, flags);
    if (!rc)
        rc = qcow2_image_flush(img);
    qcow2_image_close(img);
    return rc;
}

int rfx_compressed(memfs *fs, const char *path, uint64_t off, size_t len, int pattern)
{
    qcow2_image *img;
    uint8_t *buf = malloc(len);
    int rc;

    if (!buf)
        return QCOW2_ENOMEM;
    /* Compressible but not trivially uniform. */
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(pattern + (i / 100) % 7);
    rc = rfx_open(fs, path, QCOW2_OPEN_RDWR, 0, &img);
    if (!rc) {
        rc = qcow2_image_write_compressed(img, buf, len, off);
        if (!rc)
            rc = qcow2_image_flush(img);
        qcow2_image_close(img);
    }
    free(buf);
    return rc;
}

void rfx_poke(memfs *fs, const char *path, uint64_t off, const void *buf, size_t len)
{
    qcow2_io *io = NULL;

    if (memfs_open(&io, path, QCOW2_IO_RDWR, fs) != 0)
        abort();
    if (io->ops->pwrite(io, buf, len, off) != 0)
        abort();
    qcow2_io_close(io);
}

void rfx_poke8(memfs *fs, const char *path, uint64_t off, uint8_t v)
{
    rfx_poke(fs, path, off, &v, 1);
}

void rfx_poke32(memfs *fs, const char *path, uint64_t off, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

    rfx_poke(fs, path, off, b, 4);
}

void rfx_poke64(memfs *fs, const char *path, uint64_t off, uint64_t v)
{
    rfx_poke32(fs, path, off, (uint32_t)(v >> 32));
    rfx_poke32(fs, path, off + 4, (uint32_t)v);
}

uint32_t rfx_peek32(memfs *fs, const char *path, uint64_t off)
{
    size_t len;
    const uint8_t *p = memfs_get(fs, path, &len);

    if (!p || off + 4 > len)
        abort();
    p += off;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t rfx_peek64(memfs *fs, const char *path, uint64_t off)
{
    return (uint64_t)rfx_peek32(fs, path, off) << 32 | rfx_peek32(fs, path, off + 4);
}

void rfx_resize(memfs *fs, const char *path, size_t len)
{
    qcow2_io *io = NULL;

    if (memfs_open(&io, path, QCOW2_IO_RDWR, fs) != 0)
        abort();
    if (io->ops->truncate(io, len) != 0)
        abort();
    qcow2_io_close(io);
}

void rfx_set_backing(memfs *fs, const char *path, const char *name, const char *fmt,
                     uint64_t name_off)
{
    uint32_t version = rfx_peek32(fs, path, 4);
    uint64_t off = version == 2 ? 72 : rfx_peek32(fs, path, 100);
    uint8_t zero[8] = {0};

    if (fmt) {
        size_t len = strlen(fmt);
        size_t padded = (len + 7) & ~(size_t)7;
        uint8_t *ext = calloc(1, 8 + padded);

        if (!ext)
            abort();
        ext[0] = 0xe2;
        ext[1] = 0x79;
        ext[2] = 0x2a;
        ext[3] = 0xca;
        ext[4] = (uint8_t)(len >> 24);
        ext[5] = (uint8_t)(len >> 16);
        ext[6] = (uint8_t)(len >> 8);
        ext[7] = (uint8_t)len;
        memcpy(ext + 8, fmt, len);
        rfx_poke(fs, path, off, ext, 8 + padded);
        off += 8 + padded;
        free(ext);
    }
    rfx_poke(fs, path, off, zero, 8);
    off += 8;
    if (!name) {
        rfx_poke64(fs, path, 8, 0);
        rfx_poke32(fs, path, 16, 0);
        return;
    }
    if (name_off == 0)
        name_off = off;
    rfx_poke(fs, path, name_off, name, strlen(name));
    rfx_poke64(fs, path, 8, name_off);
    rfx_poke32(fs, path, 16, (uint32_t)strlen(name));
}

const char *rfx_msg(void)
{
    const char *m = qcow2_error_last()->message;

    return m ? m : "";
}

bool rfx_has_all(const char *s, ...)
{
    va_list ap;
    const char *needle;
    bool ok = true;

    va_start(ap, s);
    while ((needle = va_arg(ap, const char *)) != NULL) {
        if (!strstr(s, needle))
            ok = false;
    }
    va_end(ap);
    return ok;
}

void rfx_random(uint64_t seed, void *buf, size_t len)
{
    uint8_t *p = buf;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

    for (size_t i = 0; i < len; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        p[i] = (uint8_t)((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
}
