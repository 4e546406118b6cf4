/*
 * The I/O seam of libqcow2. Every byte the engine reads or writes goes
 * through one of these tables, so embedders can put images anywhere and tests
 * can inject faults and crashes under every operation.
 */
#ifndef QCOW2_SYS_IO_H
#define QCOW2_SYS_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef QCOW2_API
#define QCOW2_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qcow2_io qcow2_io;

#define QCOW2_IO_OPS_VERSION 2

/** Lock modes for qcow2_io_ops.lock. */
typedef enum qcow2_io_lock_mode {
    QCOW2_IO_UNLOCK = 0, /**< drop every lock this handle holds */
    QCOW2_IO_LOCK_READ,  /**< reader: others may read, no other writer may start */
    QCOW2_IO_LOCK_WRITE, /**< writer: refuse if anyone else reads for writing or writes */
} qcow2_io_lock_mode;

/**
 * Backend operations. Each returns 0 on success or a negative errno value
 * (-EIO, -ENOSPC, ...); the engine turns those into QCOW2_E* codes with a
 * message naming the file (-ENOENT: QCOW2_ENOTFOUND, -ENOSPC/-EDQUOT:
 * QCOW2_ENOSPC, -ENOMEM: QCOW2_ENOMEM, -EAGAIN/-EBUSY: QCOW2_EBUSY,
 * -EACCES/-EPERM/-EROFS: QCOW2_EREADONLY, -EINVAL: QCOW2_EINVAL, -ENODEV:
 * QCOW2_EUNSUPPORTED, anything else: QCOW2_EIO). Optional methods may be
 * NULL. The engine calls a backend from one thread at a time (the thread
 * using the image that owns it); a backend shared between images must
 * serialise itself.
 */
typedef struct qcow2_io_ops {
    unsigned version; /**< QCOW2_IO_OPS_VERSION */
    /** Read exactly len bytes at off; bytes past the end of the file read as zero. */
    int (*pread)(qcow2_io *io, void *buf, size_t len, uint64_t off);
    /** Write exactly len bytes at off, growing the file if needed. */
    int (*pwrite)(qcow2_io *io, const void *buf, size_t len, uint64_t off);
    /** Durability barrier: everything written before is on stable storage when it returns. */
    int (*flush)(qcow2_io *io);
    /** Set the file size (grow with zeroes or shrink). */
    int (*truncate)(qcow2_io *io, uint64_t size);
    /** The current file size in bytes. */
    int (*get_size)(qcow2_io *io, uint64_t *size_out);
    /** Optional: deallocate [off, off+len) so it reads as zero (a hole). */
    int (*punch)(qcow2_io *io, uint64_t off, uint64_t len);
    /**
     * Optional: starting at off (< file size), the length of the run of data
     * or of hole, at most len; *is_hole says which. NULL means "all data".
     */
    int (*extent)(qcow2_io *io, uint64_t off, uint64_t len, uint64_t *run_out, bool *is_hole);
    /** Optional: bytes the file occupies on its storage (st_blocks * 512). */
    int (*allocated_size)(qcow2_io *io, uint64_t *size_out);
    /** Optional: take or drop a QEMU-compatible image lock (-EAGAIN when held by another). */
    int (*lock)(qcow2_io *io, qcow2_io_lock_mode mode);
    /** Optional: copy len bytes from src at src_off to this file at off (copy offload). */
    int (*copy_from)(qcow2_io *io, uint64_t off, qcow2_io *src, uint64_t src_off, size_t len);
    /** Release the handle and everything it owns. Never fails. */
    void (*close)(qcow2_io *io);
    /**
     * Optional: a hint about [off, off+len): QCOW2_IO_ADVISE_WILLNEED starts
     * reading it in the background so a later read finds it in memory. Never
     * changes content; errors are ignored by the engine.
     */
    int (*advise)(qcow2_io *io, uint64_t off, uint64_t len, int advice);
    /**
     * Optional: reserve storage for [off, off+len), growing the file if
     * needed, so that it reads as zeroes and later writes there do not run
     * out of space (fallocate mode 0: preallocation=falloc). NULL, or
     * -EOPNOTSUPP: the engine writes zeroes instead.
     */
    int (*allocate)(qcow2_io *io, uint64_t off, uint64_t len);
    /**
     * Optional (version 2 on): make [off, off+len) of this file share the
     * storage of [src_off, src_off+len) of src (a reflink: FICLONERANGE),
     * growing the file if needed. Afterwards a write to either file changes
     * that file alone (the file system copies on write). len > 0; the engine
     * calls it with offsets and length aligned to 4 KiB. Returns 0 when
     * shared; -EOPNOTSUPP, -EXDEV, -EINVAL (the file system's alignment) or
     * -ENOTTY when this storage cannot be shared, and the engine copies.
     */
    int (*clone_from)(qcow2_io *io, uint64_t off, qcow2_io *src, uint64_t src_off, uint64_t len);
} qcow2_io_ops;

/** Advice values for qcow2_io_ops.advise. */
#define QCOW2_IO_ADVISE_WILLNEED 1 /**< will be read soon: read ahead now */
#define QCOW2_IO_ADVISE_DONTNEED 2 /**< will not be read again: drop it from the cache */

/** Base of every backend: embed it as the first member. */
struct qcow2_io {
    const qcow2_io_ops *ops; /**< the backend's methods */
};

/** Flags for opening files. */
#define QCOW2_IO_RDWR 0x1    /**< open for reading and writing (else read-only) */
#define QCOW2_IO_CREATE 0x2  /**< create the file; fail if it exists */
#define QCOW2_IO_TRUNC 0x4   /**< with QCOW2_IO_CREATE: replace an existing file */
#define QCOW2_IO_DIRECT 0x8  /**< hint: bypass the page cache where possible */
/**
 * Do not follow a symbolic link in the last path component (-ELOOP), and
 * accept only a regular file (anything else, block devices included: -ENODEV).
 */
#define QCOW2_IO_NOFOLLOW 0x10

/**
 * How the engine opens files it finds by name (backing files, and the files
 * qcow2_image_open() and qcow2_image_create() are given when set in their
 * options). The default opens POSIX files (qcow2_io_posix_open()).
 * @param[out] out     the new backend; the engine owns it and closes it with
 *                     the image
 * @param[in] path     the file, as resolved by the engine
 * @param[in] flags    QCOW2_IO_* flags
 * @param[in] payload  the open_payload of the options
 * @return 0, or a negative errno (-ENOENT for a missing file)
 */
typedef int (*qcow2_io_open_fn)(qcow2_io **out, const char *path, unsigned flags, void *payload);

/**
 * Open a POSIX file (a regular file or a block device; reads and writes
 * retry on EINTR). QCOW2_IO_DIRECT is accepted and ignored. No lock is taken
 * until the engine calls the lock method.
 * @param[out] out  the new backend, owned by the caller (qcow2_io_close(), or
 *                  hand it to qcow2_image_open_io()); NULL on failure
 * @param[in] path  file path
 * @param[in] flags QCOW2_IO_* flags
 * @return 0, or a negative errno: -ENOENT, -EEXIST (QCOW2_IO_CREATE without
 *         QCOW2_IO_TRUNC), -EACCES, -ENODEV (a FIFO, socket, directory or
 *         character device), -EINVAL (unknown flags), -ENOMEM
 */
QCOW2_API int qcow2_io_posix_open(qcow2_io **out, const char *path, unsigned flags);

/**
 * qcow2_io_posix_open() relative to a directory: path is resolved as
 * openat(2) does (relative to the directory open at dirfd, or to the current
 * directory when dirfd is AT_FDCWD; an absolute path ignores dirfd). With
 * QCOW2_IO_NOFOLLOW this lets a caller that holds its directory open (a
 * store of files other users may write to) open a file there without
 * following a link someone put in its place.
 * @param[out] out    the new backend, owned by the caller; NULL on failure
 * @param[in] dirfd   an open directory, or AT_FDCWD
 * @param[in] path    file path, relative to dirfd
 * @param[in] flags   QCOW2_IO_* flags
 * @return as qcow2_io_posix_open(), and -ELOOP (QCOW2_IO_NOFOLLOW and a
 *         symbolic link), -ENODEV (QCOW2_IO_NOFOLLOW and not a regular file),
 *         -EBADF (dirfd)
 */
QCOW2_API int qcow2_io_posix_openat(qcow2_io **out, int dirfd, const char *path, unsigned flags);

/** Largest in-memory file: writes or resizes beyond it fail with -EFBIG. */
#define QCOW2_IO_MEM_MAX_BYTES (4ull << 30)

/**
 * An in-memory file, initially holding a copy of data[0..len) (zeroes when
 * data is NULL). It grows on writes past its end, up to QCOW2_IO_MEM_MAX_BYTES.
 * It has no lock and no copy offload; flush does nothing.
 * @param[out] out   the new backend, owned by the caller (qcow2_io_close(), or
 *                   hand it to qcow2_image_open_io()); NULL on failure
 * @param[in] data   the initial content (copied), or NULL
 * @param[in] len    its length in bytes
 * @return 0, -ENOMEM, or -EFBIG when len exceeds QCOW2_IO_MEM_MAX_BYTES
 */
QCOW2_API int qcow2_io_mem_new(qcow2_io **out, const void *data, size_t len);

/**
 * The bytes of an in-memory file.
 * @param[in] io        a backend made by qcow2_io_mem_new()
 * @param[out] len_out  its length in bytes (may be NULL); 0 for another kind
 *                      of backend
 * @return the bytes, borrowed: valid until the next write, truncate or
 *         close of io; NULL when io is NULL or not an in-memory file
 */
QCOW2_API const uint8_t *qcow2_io_mem_data(qcow2_io *io, size_t *len_out);

/**
 * Close any backend through its close method, releasing it and its locks.
 * Do not close a backend an image owns (qcow2_image_open_io()).
 * @param[in] io  the backend, or NULL (nothing happens)
 */
QCOW2_API void qcow2_io_close(qcow2_io *io);

#ifdef __cplusplus
}
#endif

#endif /* QCOW2_SYS_IO_H */
