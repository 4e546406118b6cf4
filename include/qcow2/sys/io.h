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

#define QCOW2_IO_OPS_VERSION 1

/** Lock modes for qcow2_io_ops.lock. */
typedef enum qcow2_io_lock_mode {
    QCOW2_IO_UNLOCK = 0, /**< drop every lock this handle holds */
    QCOW2_IO_LOCK_READ,  /**< reader: others may read, no other writer may start */
    QCOW2_IO_LOCK_WRITE, /**< writer: refuse if anyone else reads for writing or writes */
} qcow2_io_lock_mode;

/**
 * Backend operations. Each returns 0 on success or a negative errno value
 * (-EIO, -ENOSPC, ...); the engine turns those into QCOW2_E* codes with a
 * message naming the file. Optional methods may be NULL.
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
 * How the engine opens files it finds by name (backing files). Returns 0 or
 * a negative errno. The default opens POSIX files.
 */
typedef int (*qcow2_io_open_fn)(qcow2_io **out, const char *path, unsigned flags, void *payload);

/**
 * Open a POSIX file.
 * @param[out] out  the new backend, owned by the caller (close with its ops->close)
 * @param[in] path  file path
 * @param[in] flags QCOW2_IO_* flags
 * @return 0, or a negative errno
 */
QCOW2_API int qcow2_io_posix_open(qcow2_io **out, const char *path, unsigned flags);

/** Largest in-memory file: writes or resizes beyond it fail with -EFBIG. */
#define QCOW2_IO_MEM_MAX_BYTES (4ull << 30)

/**
 * An in-memory file, initially holding a copy of data[0..len) (zeroes when
 * data is NULL). It grows on writes past its end, up to QCOW2_IO_MEM_MAX_BYTES.
 * @return 0, -ENOMEM, or -EFBIG when len exceeds QCOW2_IO_MEM_MAX_BYTES
 */
QCOW2_API int qcow2_io_mem_new(qcow2_io **out, const void *data, size_t len);

/** The bytes of an in-memory file (borrowed; valid until the next write or close). */
QCOW2_API const uint8_t *qcow2_io_mem_data(qcow2_io *io, size_t *len_out);

/** Close any backend (NULL allowed). */
QCOW2_API void qcow2_io_close(qcow2_io *io);

#ifdef __cplusplus
}
#endif

#endif /* QCOW2_SYS_IO_H */
