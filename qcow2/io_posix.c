/*
 * The POSIX file backend (sys/io.h): what qcow2_image_open() uses unless the
 * caller brings its own qcow2_io. Below it are the Linux system calls
 * (pread/pwrite with EINTR and short-transfer loops, fdatasync, fallocate,
 * SEEK_DATA/SEEK_HOLE, copy_file_range, OFD locks); above it only the choke
 * point in io.c, which turns the -errno values returned here into QCOW2_E*
 * codes with messages.
 *
 * LOCKING (QEMU-compatible). QEMU's file-posix driver expresses block-layer
 * permissions as shared OFD read locks on single bytes of the image file:
 * byte 100 + bit for each permission it holds, byte 200 + bit for each
 * permission it refuses to share. Bits: 0 consistent read, 1 write,
 * 2 write-unchanged, 3 resize. A conflict is detected with F_OFD_GETLK for
 * an exclusive lock on the opposite byte: another holder of 200 + bit blocks
 * whoever wants permission bit, another holder of 100 + bit blocks whoever
 * wants to refuse sharing bit. Observed with qemu-io 7.2:
 *
 *   qemu-io IMG (read-write)   read locks on 100, 101, 103, 201, 203
 *   qemu-io -r IMG             read locks on 100, 201, 203
 *   qemu-img info IMG          refused while a writer holds 101:
 *                              'Failed to get shared "write" lock'
 *
 * We take exactly the same bytes: a writer holds 100, 101, 103 and refuses
 * 201, 203; a reader holds 100 and refuses 201, 203. So two readers coexist,
 * a reader and a writer exclude each other, and QEMU sees us as it sees
 * itself. Locks are set first and checked afterwards (as QEMU does), so two
 * racing openers can both fail but never both succeed; on a conflict the
 * previous lock state is restored. Closing the descriptor drops the locks.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "qcow2_int.h"

#if defined(__linux__) && __has_include(<linux/fs.h>)
#include <linux/fs.h> /* FICLONERANGE */
#endif

#define LOCK_PERM_BASE 100  /* byte 100 + bit: permission held */
#define LOCK_SHARE_BASE 200 /* byte 200 + bit: permission not shared */
#define LOCK_NB_BITS 5      /* bits 0..4 (4 = graph-mod in older QEMU) */
#define PERM_CONSISTENT_READ (1u << 0)
#define PERM_WRITE (1u << 1)
#define PERM_RESIZE (1u << 3)

/* Bounce buffer for the read/write fallbacks (zeroing, copying). */
#define POSIX_BOUNCE_BYTES (1u << 20)

struct posix_io {
    qcow2_io base;              /* must be first */
    int fd;                     /* O_CLOEXEC descriptor */
    unsigned flags;             /* QCOW2_IO_* as opened */
    qcow2_io_lock_mode lock;    /* lock state currently held */
    bool no_punch;              /* fallocate(PUNCH_HOLE) unsupported here */
    bool no_seek_data;          /* SEEK_DATA/SEEK_HOLE unsupported here */
    bool no_clone;              /* FICLONERANGE unsupported here */
    bool synced;                /* nothing changed through this handle since its last fdatasync */
};

static const qcow2_io_ops posix_ops;

static struct posix_io *to_posix(qcow2_io *io)
{
    return (struct posix_io *)io;
}

/* Offsets must fit off_t; a range must end within it too. */
static bool range_ok(uint64_t off, uint64_t len)
{
    uint64_t end;

    return !qcow2__add_overflow(off, len, &end) && end <= (uint64_t)INT64_MAX;
}

static int posix_pread(qcow2_io *io, void *buf, size_t len, uint64_t off)
{
    struct posix_io *p = to_posix(io);
    uint8_t *dst = buf;

    if (!range_ok(off, len))
        return -EINVAL;
    while (len) {
        size_t chunk = (size_t)qcow2__min(len, (size_t)SSIZE_MAX);
        ssize_t n = pread(p->fd, dst, chunk, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {
            /* End of file: the rest reads as zeroes. */
            memset(dst, 0, len);
            return 0;
        }
        dst += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int posix_pwrite(qcow2_io *io, const void *buf, size_t len, uint64_t off)
{
    struct posix_io *p = to_posix(io);
    const uint8_t *src = buf;

    if (!range_ok(off, len))
        return -EFBIG;
    p->synced = false;
    while (len) {
        size_t chunk = (size_t)qcow2__min(len, (size_t)SSIZE_MAX);
        ssize_t n = pwrite(p->fd, src, chunk, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        src += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/*
 * fdatasync, unless nothing was written, truncated, punched, allocated,
 * copied or shared through this handle since its last one succeeded: on XFS
 * and btrfs even a sync with nothing to write forces the journal (a few
 * milliseconds each, and a commit flushes both files several times). A
 * handle's first flush always syncs, for what was written before it opened.
 */
static int posix_flush(qcow2_io *io)
{
    struct posix_io *p = to_posix(io);

    if (p->synced)
        return 0;
    while (fdatasync(p->fd) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    p->synced = true;
    return 0;
}

static int posix_truncate(qcow2_io *io, uint64_t size)
{
    struct posix_io *p = to_posix(io);

    if (size > (uint64_t)INT64_MAX)
        return -EFBIG;
    p->synced = false;
    while (ftruncate(p->fd, (off_t)size) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

static int posix_get_size(qcow2_io *io, uint64_t *size_out)
{
    struct posix_io *p = to_posix(io);
    struct stat st;
    off_t end;

    if (fstat(p->fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode)) {
        end = lseek(p->fd, 0, SEEK_END);
        if (end < 0)
            return -errno;
        *size_out = (uint64_t)end;
        return 0;
    }
    *size_out = st.st_size < 0 ? 0 : (uint64_t)st.st_size;
    return 0;
}

/*
 * Zero [off, off+len) by writing, clipped to the file size so that a punch
 * never grows the file (fallocate with KEEP_SIZE does not either).
 */
static int write_zeroes(struct posix_io *p, uint64_t off, uint64_t len)
{
    uint64_t size;
    uint8_t *zero;
    int rc;

    rc = posix_get_size(&p->base, &size);
    if (rc)
        return rc;
    if (off >= size)
        return 0;
    len = qcow2__min(len, size - off);
    zero = qcow2__calloc(1, POSIX_BOUNCE_BYTES);
    if (!zero)
        return -ENOMEM;
    while (len) {
        size_t n = (size_t)qcow2__min(len, POSIX_BOUNCE_BYTES);
        rc = posix_pwrite(&p->base, zero, n, off);
        if (rc)
            goto out_free;
        off += n;
        len -= n;
    }
out_free:
    qcow2__free(zero);
    return rc;
}

static int posix_punch(qcow2_io *io, uint64_t off, uint64_t len)
{
    struct posix_io *p = to_posix(io);

    if (!range_ok(off, len))
        return -EINVAL;
    if (len == 0)
        return 0;
    p->synced = false;
    if (!p->no_punch) {
        for (;;) {
            if (fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                          (off_t)len) == 0)
                return 0;
            if (errno == EINTR)
                continue;
            if (errno != EOPNOTSUPP && errno != ENOSYS)
                return -errno;
            p->no_punch = true;
            break;
        }
    }
    return write_zeroes(p, off, len);
}

/*
 * Classify the run at off with SEEK_DATA/SEEK_HOLE. ENXIO from SEEK_DATA
 * means no data at or after off: the rest is a hole (past the end of the file
 * it reads as zeroes too). A file system without the seek flags is all data.
 */
static int posix_advise(qcow2_io *io, uint64_t off, uint64_t len, int advice)
{
    struct posix_io *p = (struct posix_io *)io;
    int rc;

    if (off > INT64_MAX || len > INT64_MAX)
        return -EINVAL;
    rc = posix_fadvise(p->fd, (off_t)off, (off_t)len,
                       advice == QCOW2_IO_ADVISE_DONTNEED ? POSIX_FADV_DONTNEED
                                                          : POSIX_FADV_WILLNEED);
    return -rc;
}

static int posix_allocate(qcow2_io *io, uint64_t off, uint64_t len)
{
    struct posix_io *p = to_posix(io);

    if (off > INT64_MAX || len > INT64_MAX - off)
        return -EINVAL;
    p->synced = false;
    while (fallocate(p->fd, 0, (off_t)off, (off_t)len) < 0) {
        if (errno != EINTR)
            return errno == ENOTSUP ? -EOPNOTSUPP : -errno;
    }
    return 0;
}

static int posix_extent(qcow2_io *io, uint64_t off, uint64_t len, uint64_t *run_out,
                        bool *is_hole)
{
    struct posix_io *p = to_posix(io);
    off_t data, hole;

    if (p->no_seek_data || !range_ok(off, len))
        goto out_all_data;
    data = lseek(p->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            *run_out = len;
            *is_hole = true;
            return 0;
        }
        if (errno == EINVAL || errno == EOPNOTSUPP || errno == ENOTSUP) {
            p->no_seek_data = true;
            goto out_all_data;
        }
        return -errno;
    }
    if ((uint64_t)data > off) {
        *run_out = qcow2__min(len, (uint64_t)data - off);
        *is_hole = true;
        return 0;
    }
    hole = lseek(p->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0) {
        if (errno == ENXIO) /* the file shrank under us: treat as data */
            goto out_all_data;
        return -errno;
    }
    if ((uint64_t)hole <= off)
        goto out_all_data;
    *run_out = qcow2__min(len, (uint64_t)hole - off);
    *is_hole = false;
    return 0;

out_all_data:
    *run_out = len;
    *is_hole = false;
    return 0;
}

static int posix_allocated_size(qcow2_io *io, uint64_t *size_out)
{
    struct posix_io *p = to_posix(io);
    struct stat st;

    if (fstat(p->fd, &st) < 0)
        return -errno;
    *size_out = st.st_blocks < 0 ? 0 : (uint64_t)st.st_blocks * 512u;
    return 0;
}

/* Copy through a bounce buffer with the source's pread and our pwrite. */
static int copy_bounce(qcow2_io *dst, uint64_t off, qcow2_io *src, uint64_t src_off, size_t len)
{
    uint8_t *buf;
    int rc = 0;

    buf = qcow2__malloc((size_t)qcow2__min(len, POSIX_BOUNCE_BYTES));
    if (!buf)
        return -ENOMEM;
    while (len) {
        size_t n = (size_t)qcow2__min(len, POSIX_BOUNCE_BYTES);
        rc = src->ops->pread(src, buf, n, src_off);
        if (rc)
            goto out_free;
        rc = dst->ops->pwrite(dst, buf, n, off);
        if (rc)
            goto out_free;
        off += n;
        src_off += n;
        len -= n;
    }
out_free:
    qcow2__free(buf);
    return rc;
}

/*
 * copy_file_range between two POSIX files; anything else, or a kernel or
 * file system that refuses (cross-device, unsupported), falls back to a
 * bounce buffer. A source that ends early reads as zeroes, like pread.
 */
static int posix_copy_from(qcow2_io *io, uint64_t off, qcow2_io *src, uint64_t src_off, size_t len)
{
    struct posix_io *p = to_posix(io);
    struct posix_io *s;

    if (!range_ok(off, len) || !range_ok(src_off, len))
        return -EINVAL;
    if (src->ops != &posix_ops)
        return copy_bounce(io, off, src, src_off, len);
    s = to_posix(src);
    p->synced = false;
    while (len) {
        off_t in = (off_t)src_off;
        off_t out = (off_t)off;
        size_t chunk = (size_t)qcow2__min(len, 1u << 30);
        ssize_t n = copy_file_range(s->fd, &in, p->fd, &out, chunk, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
                errno == ENOTSUP || errno == EBADF)
                return copy_bounce(io, off, src, src_off, len);
            return -errno;
        }
        if (n == 0) /* source EOF: the rest is zeroes */
            return copy_bounce(io, off, src, src_off, len);
        off += (uint64_t)n;
        src_off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Share storage with FICLONERANGE (XFS with reflink, btrfs, and others that
 * remap ranges). Once the file system said it cannot, later calls on this
 * handle do not ask again.
 */
static int posix_clone_from(qcow2_io *io, uint64_t off, qcow2_io *src, uint64_t src_off,
                            uint64_t len)
{
    struct posix_io *p = to_posix(io);

    if (!range_ok(off, len) || !range_ok(src_off, len) || !len)
        return -EINVAL;
    if (src->ops != &posix_ops || p->no_clone)
        return -EOPNOTSUPP;
#ifdef FICLONERANGE
    p->synced = false;
    {
        struct file_clone_range r;

        r.src_fd = to_posix(src)->fd;
        r.src_offset = src_off;
        r.src_length = len;
        r.dest_offset = off;
        while (ioctl(p->fd, FICLONERANGE, &r) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EOPNOTSUPP || errno == ENOTTY || errno == ENOSYS)
                p->no_clone = true;
            return -errno;
        }
        return 0;
    }
#else
    p->no_clone = true;
    return -EOPNOTSUPP;
#endif
}

/* Set (F_RDLCK) or drop (F_UNLCK) the OFD lock on one byte. */
static int lock_byte(int fd, short type, off_t byte)
{
    struct flock fl = {0};

    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    while (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* True in *held when another open file holds any lock on byte. */
static int byte_is_held(int fd, off_t byte, bool *held)
{
    struct flock fl = {0};

    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    while (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    *held = fl.l_type != F_UNLCK;
    return 0;
}

/* Permission bits held and refused to others, per mode (see the file comment). */
static void mode_perms(qcow2_io_lock_mode mode, unsigned *perm, unsigned *unshared)
{
    switch (mode) {
    case QCOW2_IO_LOCK_WRITE:
        *perm = PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE;
        *unshared = PERM_WRITE | PERM_RESIZE;
        break;
    case QCOW2_IO_LOCK_READ:
        *perm = PERM_CONSISTENT_READ;
        *unshared = PERM_WRITE | PERM_RESIZE;
        break;
    case QCOW2_IO_UNLOCK:
    default:
        *perm = 0;
        *unshared = 0;
        break;
    }
}

/*
 * Move the bytes this descriptor holds from mode from to mode to, touching
 * only the bytes that differ (a first read lock is three fcntl calls, not
 * 22). Applied with from and to swapped, it undoes a partial move exactly.
 */
static int apply_locks(int fd, qcow2_io_lock_mode from, qcow2_io_lock_mode to)
{
    unsigned perm_from, unshared_from, perm, unshared, bit;
    int rc;

    mode_perms(from, &perm_from, &unshared_from);
    mode_perms(to, &perm, &unshared);
    for (bit = 0; bit < LOCK_NB_BITS; bit++) {
        if ((perm ^ perm_from) >> bit & 1u) {
            rc = lock_byte(fd, (perm >> bit & 1u) ? F_RDLCK : F_UNLCK,
                           (off_t)(LOCK_PERM_BASE + bit));
            if (rc)
                return rc;
        }
        if ((unshared ^ unshared_from) >> bit & 1u) {
            rc = lock_byte(fd, (unshared >> bit & 1u) ? F_RDLCK : F_UNLCK,
                           (off_t)(LOCK_SHARE_BASE + bit));
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Drop every byte this descriptor holds: they all lie in one range, so one call. */
static int unlock_all(int fd)
{
    struct flock fl = {0};

    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = LOCK_PERM_BASE;
    fl.l_len = LOCK_SHARE_BASE + LOCK_NB_BITS - LOCK_PERM_BASE;
    while (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

/* -EAGAIN when another open file's locks conflict with mode. */
static int check_locks(int fd, qcow2_io_lock_mode mode)
{
    unsigned perm, unshared, bit;
    bool held;
    int rc;

    mode_perms(mode, &perm, &unshared);
    for (bit = 0; bit < LOCK_NB_BITS; bit++) {
        if (perm >> bit & 1u) {
            rc = byte_is_held(fd, (off_t)(LOCK_SHARE_BASE + bit), &held);
            if (rc)
                return rc;
            if (held)
                return -EAGAIN;
        }
        if (unshared >> bit & 1u) {
            rc = byte_is_held(fd, (off_t)(LOCK_PERM_BASE + bit), &held);
            if (rc)
                return rc;
            if (held)
                return -EAGAIN;
        }
    }
    return 0;
}

static int posix_lock(qcow2_io *io, qcow2_io_lock_mode mode)
{
    struct posix_io *p = to_posix(io);
    int rc;

    if (mode != QCOW2_IO_UNLOCK && mode != QCOW2_IO_LOCK_READ && mode != QCOW2_IO_LOCK_WRITE)
        return -EINVAL;
    if (mode == QCOW2_IO_UNLOCK) {
        rc = unlock_all(p->fd);
        if (rc == 0)
            p->lock = mode;
        return rc;
    }
    rc = apply_locks(p->fd, p->lock, mode);
    if (rc == 0 && mode != QCOW2_IO_UNLOCK)
        rc = check_locks(p->fd, mode);
    if (rc) {
        /* Back to what we held before; the first failure is what counts. */
        (void)apply_locks(p->fd, mode, p->lock);
        return rc;
    }
    p->lock = mode;
    return 0;
}

static void posix_close(qcow2_io *io)
{
    struct posix_io *p = to_posix(io);

    /* Closing the descriptor drops its OFD locks. EINTR on close: the fd is gone anyway. */
    (void)close(p->fd);
    qcow2__free(p);
}

static const qcow2_io_ops posix_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = posix_pread,
    .pwrite = posix_pwrite,
    .flush = posix_flush,
    .truncate = posix_truncate,
    .get_size = posix_get_size,
    .punch = posix_punch,
    .extent = posix_extent,
    .advise = posix_advise,
    .allocate = posix_allocate,
    .allocated_size = posix_allocated_size,
    .lock = posix_lock,
    .copy_from = posix_copy_from,
    .close = posix_close,
    .clone_from = posix_clone_from,
};

/*
 * QCOW2_IO_DIRECT is accepted and ignored: O_DIRECT needs buffers, offsets
 * and lengths aligned to the device's logical block, which the engine does
 * not promise. QCOW2_IO_NOFOLLOW: a symbolic link as the last component is
 * refused by the kernel (O_NOFOLLOW, -ELOOP), and only a regular file is
 * accepted (a block device too is -ENODEV), so a file someone else swapped
 * for a link or a device is never read or written through.
 */
int qcow2_io_posix_openat(qcow2_io **out, int dirfd, const char *path, unsigned flags)
{
    struct posix_io *p;
    int oflags = O_CLOEXEC;
    int fd;

    *out = NULL;
    if (flags & ~(unsigned)(QCOW2_IO_RDWR | QCOW2_IO_CREATE | QCOW2_IO_TRUNC | QCOW2_IO_DIRECT |
                            QCOW2_IO_NOFOLLOW))
        return -EINVAL;
    if (flags & QCOW2_IO_CREATE) {
        oflags |= O_RDWR | O_CREAT;
        oflags |= (flags & QCOW2_IO_TRUNC) ? O_TRUNC : O_EXCL;
    } else {
        oflags |= (flags & QCOW2_IO_RDWR) ? O_RDWR : O_RDONLY;
        if ((flags & QCOW2_IO_TRUNC) && (flags & QCOW2_IO_RDWR))
            oflags |= O_TRUNC;
    }
    if (flags & QCOW2_IO_NOFOLLOW)
        oflags |= O_NOFOLLOW;
    p = qcow2__calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    /* O_NONBLOCK: a FIFO must be refused, not waited on. */
    do {
        fd = openat(dirfd, path, oflags | O_NONBLOCK, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int e = errno;
        qcow2__free(p);
        return -e;
    }
    {
        struct stat st;
        bool blk_ok = !(flags & QCOW2_IO_NOFOLLOW);
        /* O_NONBLOCK means nothing to a regular file: only a device needs it cleared. */
        if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || (blk_ok && S_ISBLK(st.st_mode))) ||
            (S_ISBLK(st.st_mode) && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)) {
            /* Devices other than block devices, FIFOs, sockets, directories. */
            close(fd);
            qcow2__free(p);
            return -ENODEV;
        }
    }
    p->base.ops = &posix_ops;
    p->fd = fd;
    p->flags = flags;
    p->lock = QCOW2_IO_UNLOCK;
    *out = &p->base;
    return 0;
}

/*
 * Whether two handles are the same file: 1 yes, 0 no, -1 unknown (one is not
 * a POSIX handle, or fstat failed).
 */
int qcow2__io_same_file(qcow2_io *a, qcow2_io *b)
{
    struct stat sa, sb;

    if (!a || !b || a->ops != &posix_ops || b->ops != &posix_ops)
        return -1;
    if (fstat(to_posix(a)->fd, &sa) < 0 || fstat(to_posix(b)->fd, &sb) < 0)
        return -1;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int qcow2__io_is_path(qcow2_io *io, const char *path)
{
    struct stat sa, sb;

    if (!io || io->ops != &posix_ops || fstat(to_posix(io)->fd, &sa) < 0)
        return -1;
    if (stat(path, &sb) < 0)
        return errno == ENOENT ? 0 : -1;
    /* Another node of the same block device opens the same disk. */
    if (S_ISBLK(sa.st_mode) && S_ISBLK(sb.st_mode))
        return sa.st_rdev == sb.st_rdev;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int qcow2_io_posix_open(qcow2_io **out, const char *path, unsigned flags)
{
    return qcow2_io_posix_openat(out, AT_FDCWD, path, flags);
}
