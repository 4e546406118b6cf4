/*
 * The one choke point between the engine and the I/O backends (sys/io.h).
 * The engine never calls ops-> directly: it calls these, which turn a
 * backend's -errno into a QCOW2_E* code with a message naming the file.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "qcow2_int.h"

int qcow2__io_error(int neg_errno, const char *name, const char *what)
{
    int e = neg_errno < 0 ? -neg_errno : neg_errno;
    int code;

    switch (e) {
    case ENOSPC:
    case EDQUOT:
        code = QCOW2_ENOSPC;
        break;
    case ENOMEM:
        code = QCOW2_ENOMEM;
        break;
    case ENOENT:
    case ENOTDIR:
        code = QCOW2_ENOTFOUND;
        break;
    case EEXIST:
        code = QCOW2_EEXISTS;
        break;
    case EAGAIN:
    case EBUSY:
        code = QCOW2_EBUSY;
        break;
    case EROFS:
    case EACCES:
    case EPERM:
        code = QCOW2_EREADONLY;
        break;
    case EINVAL:
        code = QCOW2_EINVAL;
        break;
    case ENODEV:
        /* io_posix's answer for what is not a regular file or block device. */
        return qcow2__err(QCOW2_EUNSUPPORTED, e, name,
                          "%s: not a regular file or block device", what);
    default:
        code = QCOW2_EIO;
        break;
    }
    return qcow2__err(code, e, name, "%s: %s", what, strerror(e));
}

int qcow2__io_read(qcow2_io *io, const char *name, void *buf, size_t len, uint64_t off)
{
    int rc;
    char what[96];

    if (len == 0)
        return 0;
    rc = io->ops->pread(io, buf, len, off);
    if (rc < 0) {
        snprintf(what, sizeof(what), "read of %zu bytes at 0x%" PRIx64 " failed", len, off);
        return qcow2__io_error(rc, name, what);
    }
    return 0;
}

int qcow2__io_write(qcow2_io *io, const char *name, const void *buf, size_t len, uint64_t off)
{
    int rc;
    char what[96];

    if (len == 0)
        return 0;
    rc = io->ops->pwrite(io, buf, len, off);
    if (rc < 0) {
        snprintf(what, sizeof(what), "write of %zu bytes at 0x%" PRIx64 " failed", len, off);
        return qcow2__io_error(rc, name, what);
    }
    return 0;
}

int qcow2__io_clone(qcow2_io *io, const char *name, uint64_t off, qcow2_io *src, uint64_t src_off,
                    uint64_t len)
{
    int rc;
    char what[96];

    if (!len || io->ops->version < 2 || !io->ops->clone_from ||
        ((off | src_off | len) & (QCOW2__CLONE_ALIGN - 1)))
        return 0;
    rc = io->ops->clone_from(io, off, src, src_off, len);
    if (rc == 0)
        return 1;
    switch (-rc) {
    case EOPNOTSUPP:
#if ENOTSUP != EOPNOTSUPP
    case ENOTSUP:
#endif
    case EXDEV:
    case EINVAL:
    case ENOTTY:
    case ENOSYS:
    case EBADF:
    case EPERM:
    case ETXTBSY:
        return 0; /* cannot share here: the caller copies */
    default:
        snprintf(what, sizeof(what), "sharing %" PRIu64 " bytes at 0x%" PRIx64 " failed", len, off);
        return qcow2__io_error(rc, name, what);
    }
}

int qcow2__io_flush(qcow2_io *io, const char *name)
{
    int rc = io->ops->flush ? io->ops->flush(io) : 0;

    return rc < 0 ? qcow2__io_error(rc, name, "flush failed") : 0;
}

int qcow2__sync(qcow2_image *img)
{
    if (img->opts.flags & QCOW2_OPEN_NO_FLUSH)
        return 0;
    return qcow2__io_flush(img->io, img->name);
}

int qcow2__io_truncate(qcow2_io *io, const char *name, uint64_t size)
{
    int rc;
    char what[80];

    if (!io->ops->truncate)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, name, "the backend cannot resize files");
    rc = io->ops->truncate(io, size);
    if (rc < 0) {
        snprintf(what, sizeof(what), "resize to %" PRIu64 " bytes failed", size);
        return qcow2__io_error(rc, name, what);
    }
    return 0;
}

int qcow2__io_size(qcow2_io *io, const char *name, uint64_t *size_out)
{
    int rc = io->ops->get_size(io, size_out);

    return rc < 0 ? qcow2__io_error(rc, name, "cannot get the file size") : 0;
}

int qcow2__io_write_zeroes(qcow2_io *io, const char *name, uint64_t off, uint64_t len)
{
    static const uint8_t zero[65536];

    while (len) {
        size_t n = (size_t)qcow2__min(len, sizeof(zero));
        int rc = qcow2__io_write(io, name, zero, n, off);
        if (rc)
            return rc;
        off += n;
        len -= n;
    }
    return 0;
}

int qcow2__io_allocate(qcow2_io *io, const char *name, uint64_t off, uint64_t len)
{
    int rc = -EOPNOTSUPP;
    char what[96];

    if (len == 0)
        return 0;
    if (io->ops->allocate)
        rc = io->ops->allocate(io, off, len);
    if (rc == -EOPNOTSUPP || rc == -ENOSYS)
        return qcow2__io_write_zeroes(io, name, off, len); /* no reservation: real zeroes */
    if (rc < 0) {
        snprintf(what, sizeof(what), "reserving %" PRIu64 " bytes at 0x%" PRIx64 " failed", len,
                 off);
        return qcow2__io_error(rc, name, what);
    }
    return 0;
}

int qcow2__io_punch(qcow2_io *io, const char *name, uint64_t off, uint64_t len)
{
    int rc;
    char what[96];

    if (len == 0)
        return 0;
    if (!io->ops->punch)
        return qcow2__io_write_zeroes(io, name, off, len); /* no hole support */
    rc = io->ops->punch(io, off, len);
    if (rc < 0) {
        snprintf(what, sizeof(what), "discard of %" PRIu64 " bytes at 0x%" PRIx64 " failed", len,
                 off);
        return qcow2__io_error(rc, name, what);
    }
    return 0;
}

int qcow2__io_extent(qcow2_io *io, const char *name, uint64_t off, uint64_t len, uint64_t *run_out,
                     bool *is_hole)
{
    int rc;

    if (!io->ops->extent) {
        *run_out = len;
        *is_hole = false;
        return 0;
    }
    rc = io->ops->extent(io, off, len, run_out, is_hole);
    if (rc < 0)
        return qcow2__io_error(rc, name, "cannot map the file's data and holes");
    if (*run_out == 0 || *run_out > len)
        *run_out = len;
    return 0;
}

int qcow2__io_allocated(qcow2_io *io, const char *name, uint64_t *size_out)
{
    int rc;

    if (!io->ops->allocated_size)
        return qcow2__io_size(io, name, size_out);
    rc = io->ops->allocated_size(io, size_out);
    return rc < 0 ? qcow2__io_error(rc, name, "cannot get the allocated size") : 0;
}

int qcow2__io_lock(qcow2_io *io, const char *name, qcow2_io_lock_mode mode)
{
    int rc;

    if (!io->ops->lock)
        return 0;
    rc = io->ops->lock(io, mode);
    if (rc == -EAGAIN || rc == -EACCES || rc == -EBUSY)
        return qcow2__err(QCOW2_EBUSY, -rc, name,
                          "image is in use by another process (qemu or qsnap holds its lock)");
    return rc < 0 ? qcow2__io_error(rc, name, "cannot lock the image") : 0;
}

void qcow2__io_advise(qcow2_io *io, uint64_t off, uint64_t len, int advice)
{
    /* Only a hint: a backend without it, or one that fails, changes nothing. */
    if (len && io->ops->advise)
        (void)io->ops->advise(io, off, len, advice);
}

void qcow2_io_close(qcow2_io *io)
{
    if (io && io->ops->close)
        io->ops->close(io);
}
