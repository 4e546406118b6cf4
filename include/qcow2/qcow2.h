/*
 * libqcow2: a qcow2 (v2 and v3) and raw image engine with backing chains.
 *
 * Thread-safety: a qcow2_image (and the chain below it) may be used by one
 * thread at a time. Different images may be used from different threads.
 * Error details are per thread (qcow2_error_last()).
 */
#ifndef QCOW2_QCOW2_H
#define QCOW2_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef QCOW2_API
#define QCOW2_API __attribute__((visibility("default")))
#endif

#include "qcow2/errors.h"
#include "qcow2/sys/io.h"
#include "qcow2/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/** An open image of any supported format, with its backing chain below it. */
typedef struct qcow2_image qcow2_image;

/**
 * The version of the library linked at run time, as QCOW2_VERSION_NUMBER
 * encodes it; compare with the QCOW2_VERSION_NUMBER a program was compiled
 * against to detect a different shared library.
 * @return the version number; never fails. Thread-safe.
 */
QCOW2_API unsigned qcow2_version_number(void);

/** Image formats. */
typedef enum qcow2_format {
    QCOW2_FORMAT_AUTO = 0, /**< probe: qcow2 if the magic matches, else raw */
    QCOW2_FORMAT_RAW = 1,  /**< a plain disk image */
    QCOW2_FORMAT_QCOW2 = 2 /**< qcow2 version 2 or 3 */
} qcow2_format;

/**
 * The name of a format, as qemu-img spells it.
 * @param[in] fmt  a format
 * @return a static string ("raw", "qcow2"), or NULL for QCOW2_FORMAT_AUTO and
 *         unknown values. Thread-safe.
 */
QCOW2_API const char *qcow2_format_name(qcow2_format fmt);

/**
 * Parse a format name (exact, case-sensitive: "raw" or "qcow2").
 * @param[in] name  the name, or NULL
 * @return the format; QCOW2_FORMAT_AUTO for NULL or an unknown name (there
 *         is no error code). Thread-safe.
 */
QCOW2_API qcow2_format qcow2_format_from_name(const char *name);

/** Default and hard limits. */
#define QCOW2_DEFAULT_CACHE_BYTES (4u << 20) /**< L2 cache per image unless set */
#define QCOW2_MAX_CHAIN_DEPTH 256            /**< deepest backing chain opened */

/* Flags for qcow2_open_opts.flags. */
#define QCOW2_OPEN_RDWR 0x1       /**< open the top image for writing (the chain below stays read-only) */
#define QCOW2_OPEN_NO_BACKING 0x2 /**< do not open the backing chain */
#define QCOW2_OPEN_NO_LOCK 0x4    /**< do not take the image lock (like qemu-img -U) */
#define QCOW2_OPEN_CHECK 0x8      /**< do not repair a dirty image at open (for check, like qemu's BDRV_O_CHECK) */
/**
 * Skip durability barriers (qemu's cache=unsafe): writes keep their order in
 * the page cache but nothing is forced to disk, so a crash of the machine can
 * lose or damage the image. For new images that can be made again (convert
 * targets); never for data that must survive.
 */
#define QCOW2_OPEN_NO_FLUSH 0x10

#define QCOW2_OPEN_OPTS_VERSION 1

/** Options for qcow2_image_open(). Initialise with QCOW2_OPEN_OPTS_INIT. */
typedef struct qcow2_open_opts {
    unsigned version;         /**< QCOW2_OPEN_OPTS_VERSION */
    unsigned flags;           /**< QCOW2_OPEN_* */
    qcow2_format format;      /**< format of the top image; AUTO probes */
    uint64_t cache_bytes;     /**< L2 cache budget per image, bytes; 0 = default */
    unsigned max_depth;       /**< deepest chain accepted; 0 = QCOW2_MAX_CHAIN_DEPTH */
    qcow2_io_open_fn open_fn; /**< how backing files are opened; NULL = POSIX */
    void *open_payload;       /**< passed to open_fn */
} qcow2_open_opts;

#define QCOW2_OPEN_OPTS_INIT {QCOW2_OPEN_OPTS_VERSION, 0, QCOW2_FORMAT_AUTO, 0, 0, NULL, NULL}

/**
 * Open an image file and its backing chain.
 *
 * Relative backing names resolve against the directory of the image that
 * names them; the backing-format extension is honoured (a missing one means
 * probe). Loops, chains deeper than max_depth and backing names that are not
 * plain paths ("json:", "nbd:" and other protocol prefixes) are refused.
 *
 * With QCOW2_OPEN_RDWR a dirty image (lazy refcounts) is repaired at open
 * unless QCOW2_OPEN_CHECK is set. Unless QCOW2_OPEN_NO_LOCK, QEMU-compatible
 * locks are taken (shared for reading, exclusive for writing) and held until
 * qcow2_image_close().
 *
 * @param[out] out   the new handle, owned by the caller (qcow2_image_close());
 *                   NULL on failure
 * @param[in] path   the image file (a regular file or a block device)
 * @param[in] opts   options, or NULL for defaults
 * @return 0; QCOW2_ENOTFOUND (a file of the chain is missing), QCOW2_ECORRUPT
 *         (bad metadata), QCOW2_EUNSUPPORTED (a feature not handled, not a
 *         regular file or block device), QCOW2_EBUSY (locked by another
 *         process), QCOW2_EREADONLY (no permission to open for writing),
 *         QCOW2_EINVAL (NULL out or path, unknown opts->version), QCOW2_EIO,
 *         QCOW2_ENOMEM.
 */
QCOW2_API int qcow2_image_open(qcow2_image **out, const char *path, const qcow2_open_opts *opts);

/**
 * Open an image from an I/O backend, as qcow2_image_open() does from a path.
 * Backing files named by the image are opened with opts->open_fn (POSIX files
 * when NULL).
 *
 * @param[out] out   the new handle, owned by the caller (qcow2_image_close());
 *                   NULL on failure
 * @param[in] io     the backend of the top image; the handle takes ownership
 *                   of it, also on failure (do not close it yourself)
 * @param[in] name   used in messages and to resolve relative backing names
 *                   (copied)
 * @param[in] opts   options, or NULL for defaults
 * @return the codes of qcow2_image_open()
 */
QCOW2_API int qcow2_image_open_io(qcow2_image **out, qcow2_io *io, const char *name,
                                  const qcow2_open_opts *opts);

/**
 * Close an image and its whole backing chain, release the locks and free the
 * handle. Pending writes are flushed and a writable image's header is left
 * clean; a failure to do so cannot be reported (call qcow2_image_flush()
 * first to see it). Every borrowed pointer from the handle (backing layers,
 * qcow2_info and qcow2_snapshot_info strings, extent layers) becomes invalid.
 * @param[in] img  the image, or NULL (nothing happens)
 */
QCOW2_API void qcow2_image_close(qcow2_image *img);

/**
 * Read guest data, resolving the whole backing chain: unallocated ranges read
 * through to the backing file, and as zeroes past its end or with none.
 *
 * @param[in] img        the image
 * @param[out] buf       len bytes of guest data
 * @param[in] len        bytes to read (0 is allowed)
 * @param[in] guest_off  guest offset; [guest_off, guest_off + len) must lie
 *                       within the virtual size
 * @return 0; QCOW2_EINVAL (past the virtual size, NULL buf),
 *         QCOW2_ECORRUPT (an entry on the path is out of range), QCOW2_EIO,
 *         QCOW2_ENOMEM. On failure buf holds unspecified bytes.
 */
QCOW2_API int qcow2_image_read(qcow2_image *img, void *buf, size_t len, uint64_t guest_off);

/**
 * The virtual (guest-visible) size in bytes (with qcow2_image_view_snapshot(),
 * the snapshot's disk size).
 * @param[in] img  the image (not NULL)
 * @return the size; never fails
 */
QCOW2_API uint64_t qcow2_image_size(const qcow2_image *img);

/**
 * The format of this layer (never QCOW2_FORMAT_AUTO: probing has decided).
 * @param[in] img  the image (not NULL)
 * @return QCOW2_FORMAT_RAW or QCOW2_FORMAT_QCOW2
 */
QCOW2_API qcow2_format qcow2_image_format(const qcow2_image *img);

/**
 * The name the image was opened with (for a backing layer: its resolved path).
 * @param[in] img  the image (not NULL)
 * @return the name, borrowed: valid until the image is closed
 */
QCOW2_API const char *qcow2_image_filename(const qcow2_image *img);

/**
 * The layer below, opened with the image.
 * @param[in] img  the image (not NULL)
 * @return the backing image, or NULL when there is none or the image was
 *         opened with QCOW2_OPEN_NO_BACKING. Borrowed: do not close it; it
 *         lives as long as img (qcow2_image_rebase() replaces it)
 */
QCOW2_API qcow2_image *qcow2_image_backing(const qcow2_image *img);

/**
 * The number of layers in the opened chain starting at img.
 * @param[in] img  the image, or NULL (0)
 * @return 1 for an image with no backing file (or opened without it), more
 *         for a chain
 */
QCOW2_API unsigned qcow2_image_chain_length(const qcow2_image *img);

/** Facts about one layer, as qemu-img info shows them. Strings are borrowed from the image. */
typedef struct qcow2_info {
    qcow2_format format;        /**< this layer's format */
    const char *filename;       /**< name the image was opened with */
    uint64_t virtual_size;      /**< bytes */
    uint64_t actual_size;       /**< bytes the file occupies on its storage */
    uint64_t file_size;         /**< bytes (the file's length) */
    uint32_t cluster_size;      /**< bytes; 0 for raw */
    uint32_t qcow2_version;     /**< 2 or 3; 0 for raw */
    uint32_t refcount_bits;     /**< 1..64; 0 for raw */
    uint32_t compression_type;  /**< 0 deflate ("zlib"), 1 zstd */
    bool lazy_refcounts;        /**< compatible bit 0 */
    bool dirty;                 /**< incompatible bit 0 */
    bool corrupt;               /**< incompatible bit 1 */
    bool extended_l2;           /**< incompatible bit 4 */
    uint64_t incompatible_features; /**< raw header bits */
    uint64_t compatible_features;   /**< raw header bits */
    uint64_t autoclear_features;    /**< raw header bits */
    const char *backing_name;   /**< backing name as stored, or NULL */
    const char *backing_format; /**< backing-format extension, or NULL */
    const char *backing_path;   /**< the backing name resolved to a path, or NULL */
    uint32_t nb_snapshots;      /**< internal snapshots */
    uint32_t nb_bitmaps;        /**< persistent bitmaps (bitmaps extension) */
} qcow2_info;

/**
 * Facts about img (this layer only), as qemu-img info shows them.
 * @param[in] img   the image (not NULL)
 * @param[out] out  filled in; its strings are borrowed from img (valid until
 *                  it is closed or, for the backing fields, rebased). Fields
 *                  that do not apply (qcow2 fields of a raw image) are 0/NULL;
 *                  actual_size is 0 when the backend cannot tell
 * @return 0 (this call does not fail)
 */
QCOW2_API int qcow2_image_get_info(const qcow2_image *img, qcow2_info *out);

/** One internal snapshot. Strings are borrowed from the image. */
typedef struct qcow2_snapshot_info {
    const char *id;         /**< unique id string */
    const char *name;       /**< name (may be empty) */
    uint64_t l1_offset;     /**< host offset of the snapshot's L1 table */
    uint32_t l1_size;       /**< entries */
    uint32_t date_sec;      /**< creation time, seconds since the epoch */
    uint32_t date_nsec;     /**< and nanoseconds */
    uint64_t vm_clock_nsec; /**< guest run time at creation */
    uint64_t vm_state_size; /**< bytes of saved VM state */
    uint64_t disk_size;     /**< virtual size at creation (bytes) */
    int64_t icount;         /**< instruction count, or -1 */
} qcow2_snapshot_info;

/**
 * The number of internal snapshots in this layer's snapshot table.
 * @param[in] img  the image (not NULL)
 * @return the count; 0 for raw images
 */
QCOW2_API size_t qcow2_snapshot_count(const qcow2_image *img);

/**
 * Facts about one internal snapshot of this layer.
 * @param[in] img   the image (not NULL)
 * @param[in] i     its index, 0 to qcow2_snapshot_count() - 1
 * @param[out] out  filled in; its strings are borrowed from img and stay
 *                  valid until the image is closed or its snapshot table
 *                  changes (qcow2_snapshot_create/apply/delete)
 * @return 0; QCOW2_EINVAL (i out of range, NULL out)
 */
QCOW2_API int qcow2_snapshot_get(const qcow2_image *img, size_t i, qcow2_snapshot_info *out);

/* Flags of qcow2_extent.flags, with qemu-img map's meaning. */
#define QCOW2_EXT_PRESENT 0x1      /**< allocated in some layer (else it reads through to nothing) */
#define QCOW2_EXT_ZERO 0x2         /**< reads as zeroes */
#define QCOW2_EXT_DATA 0x4         /**< backed by data in a file */
#define QCOW2_EXT_OFFSET_VALID 0x8 /**< host_off is the run's position in its layer's file */
#define QCOW2_EXT_COMPRESSED 0x10  /**< a compressed cluster */

/** A run of guest bytes with one allocation status. */
typedef struct qcow2_extent {
    uint64_t start;      /**< guest offset, bytes */
    uint64_t length;     /**< bytes */
    unsigned depth;      /**< layer that decides the content: 0 = img itself */
    unsigned flags;      /**< QCOW2_EXT_* */
    uint64_t host_off;   /**< with QCOW2_EXT_OFFSET_VALID: offset in that layer's file */
    qcow2_image *layer;  /**< that layer (borrowed) */
} qcow2_extent;

/**
 * The allocation status of the run starting at guest_off, across the chain
 * from img down to (not including) base. base NULL means the whole chain.
 * A run that no layer above base allocates is reported without
 * QCOW2_EXT_PRESENT, at the depth of the deepest layer that was looked at.
 *
 * @param[in] img        the top of the chain to look at
 * @param[in] base       a layer of img's chain where the walk stops, or NULL
 * @param[in] guest_off  start of the run, bytes
 * @param[in] len        longest run wanted, > 0 (guest_off + len must lie
 *                       within the virtual size)
 * @param[out] out       the run; out->length is > 0 and at most len;
 *                       out->layer is borrowed from img's chain
 * @return 0; QCOW2_EINVAL (len 0 or past the virtual size), QCOW2_ECORRUPT
 *         (an L1/L2 entry out of range), QCOW2_EIO, QCOW2_ENOMEM
 */
QCOW2_API int qcow2_image_block_status(qcow2_image *img, const qcow2_image *base,
                                       uint64_t guest_off, uint64_t len, qcow2_extent *out);

/**
 * Progress callback: done and total in bytes of guest content. Called on the
 * calling thread, from inside the operation; it must not use the images the
 * operation works on.
 */
typedef void (*qcow2_progress_fn)(uint64_t done, uint64_t total, void *payload);

/**
 * Digest of the guest-visible content (all of the virtual size), as 16
 * big-endian bytes: xxh3-128 over the non-zero 4 KiB blocks in order, then
 * a trailer with the size and an xxh3-128 of the list of zero runs
 * (docs/DIGEST.md defines it byte by byte). Zero and unallocated runs are
 * not read and cost one list entry whatever their length; zeroes written as
 * data hash as a hole does. The digest depends on the content only, not on
 * format, chain or layout.
 * @param[in] img          the image (the whole chain is read)
 * @param[out] digest_out  the 16 bytes
 * @param[in] progress     progress callback, or NULL
 * @param[in] payload      passed to progress
 * @return 0; QCOW2_ECORRUPT, QCOW2_EIO, QCOW2_ENOMEM
 */
QCOW2_API int qcow2_image_digest(qcow2_image *img, uint8_t digest_out[16], qcow2_progress_fn progress,
                                 void *payload);

/**
 * Compare the guest content of two images (qemu-img compare). Without
 * strict, the tail of the larger image must read as zeroes. With strict
 * (qemu-img compare -s), images of different sizes differ, and so do images
 * whose allocation status differs anywhere (present, zero, data, offset
 * known, end of image), even where the content reads the same.
 * @param[in] a, b              the two images (whole chains)
 * @param[in] strict            compare sizes and allocation status too
 * @param[out] mismatch_off_out  first differing guest offset, set when the
 *                              result is 1 (may be NULL)
 * @param[in] progress          progress callback, or NULL
 * @param[in] payload           passed to progress
 * @return 0 identical, 1 different (content, or with strict the size or the
 *         allocation status), or a negative code: QCOW2_ECORRUPT, QCOW2_EIO,
 *         QCOW2_ENOMEM
 */
QCOW2_API int qcow2_image_compare(qcow2_image *a, qcow2_image *b, bool strict,
                                  uint64_t *mismatch_off_out, qcow2_progress_fn progress,
                                  void *payload);

#define QCOW2_CONVERT_OPTS_VERSION 1

/** Options for qcow2_image_convert(). Initialise with QCOW2_CONVERT_OPTS_INIT. */
typedef struct qcow2_convert_opts {
    unsigned version;           /**< QCOW2_CONVERT_OPTS_VERSION */
    qcow2_format format;        /**< output format (QCOW2_FORMAT_RAW for now) */
    uint64_t min_sparse;        /**< zero runs at least this long stay holes; 0 = write every byte */
    qcow2_progress_fn progress; /**< progress callback, or NULL: as qemu-img convert -p counts, over the bytes copied (data; zeroes too with min_sparse 0), a call per extent of at most 2 MiB and a last one at the end (without -B) */
    void *payload;              /**< passed to progress */
    bool compress;              /**< qcow2 output: compress every cluster (-c) */
    const struct qcow2_create_opts *create; /**< qcow2 output: creation options, or NULL */
    const char *backing;        /**< qcow2 output: backing file of the new image (-B), or NULL */
    const char *backing_format; /**< its format (-F); required with backing */
    bool salvage;               /**< a failed source read (bad data: QCOW2_ECORRUPT, QCOW2_EIO) is tried again per 512-byte sector; those still failing are written as zeroes, and the convert goes on (qemu-img convert --salvage) */
    void (*read_error)(uint64_t guest_off, int code, void *payload); /**< with salvage: called for each sector that reads as zeroes instead, or NULL */
    bool no_create;             /**< write into the existing image dst_path (qemu-img convert -n): it must be at least as large as src; zero ranges are zeroed in it; not with compress or backing */
} qcow2_convert_opts;

#define QCOW2_CONVERT_OPTS_INIT                                                                    \
    {QCOW2_CONVERT_OPTS_VERSION, QCOW2_FORMAT_RAW, 4096, NULL, NULL, false, NULL, NULL, NULL, false, NULL, false}

/**
 * Flatten the guest content of src (the whole chain) into a new file at
 * dst_path (replaced if it exists; with no_create, written into the
 * existing image of that format there, QCOW2_EINVAL when it is smaller than
 * src). Raw output is sparse: zero runs of at
 * least min_sparse bytes are left as holes; qcow2 output leaves them
 * unallocated (min_sparse 0 without compress: every cluster is allocated). Like qemu-img convert, the output is not flushed to stable
 * storage: sync it when it must survive a crash of the machine. On failure
 * the output may be left half-written.
 * @param[in] src       the image to read (whole chain)
 * @param[in] dst_path  the file to write; it is the caller's afterwards
 * @param[in] opts      options, or NULL for raw output with the defaults
 * @return 0; QCOW2_EUNSUPPORTED (output format), QCOW2_EINVAL (compress with
 *         raw output, bad creation options, dst_path (links followed) is a
 *         file of src's chain), QCOW2_ENOTFOUND (the new
 *         backing file), QCOW2_EREADONLY (no permission), QCOW2_EIO,
 *         QCOW2_ENOSPC, QCOW2_ECORRUPT (src)
 */
QCOW2_API int qcow2_image_convert(qcow2_image *src, const char *dst_path,
                                  const qcow2_convert_opts *opts);

/**
 * Fingerprint of a file's bytes: xxh3-128 over its size and every 64 KiB
 * block that is not all zeroes (its offset and bytes). Holes are not read,
 * so a sparse file costs what it holds, and a hole hashes as the zeroes it
 * reads as: the same bytes with another hole layout (a copy by cp, rsync
 * -S or tar that made zeroes sparse or filled holes) give the same
 * fingerprint. Any change to the file's content changes it. Used to prove
 * that a frozen layer was not modified.
 * @param[in] path  the file (opened read-only, without locks)
 * @param[out] out  the 16 bytes
 * @return 0; QCOW2_ENOTFOUND, QCOW2_EREADONLY (no permission to read),
 *         QCOW2_EIO, QCOW2_ENOMEM. Thread-safe (no handle is shared).
 */
QCOW2_API int qcow2_file_fingerprint(const char *path, uint8_t out[16]);

/**
 * The same over the bytes from `from` on (the size still counts): with from =
 * the cluster size of a qcow2 file, a fingerprint of everything but its
 * header cluster, which tells a changed backing link from changed data.
 * @param[in] path  the file
 * @param[in] from  first byte hashed (from past the end hashes the size only)
 * @param[out] out  the 16 bytes
 * @return as qcow2_file_fingerprint()
 */
QCOW2_API int qcow2_file_fingerprint_from(const char *path, uint64_t from, uint8_t out[16]);

/**
 * Both fingerprints in one pass over the file: all = qcow2_file_fingerprint(),
 * tail = qcow2_file_fingerprint_from(from); each block is read once.
 * @param[in] path  the file
 * @param[in] from  first byte of the tail
 * @param[out] all  16 bytes
 * @param[out] tail 16 bytes
 * @return as qcow2_file_fingerprint()
 */
QCOW2_API int qcow2_file_fingerprints(const char *path, uint64_t from, uint8_t all[16],
                                      uint8_t tail[16]);

/* ---- writing ------------------------------------------------------------- */

/** Preallocation modes (qemu-img's preallocation=). */
typedef enum qcow2_prealloc {
    QCOW2_PREALLOC_OFF = 0,      /**< allocate on write */
    QCOW2_PREALLOC_METADATA = 1, /**< allocate L2 tables and data clusters, file stays sparse */
    QCOW2_PREALLOC_FALLOC = 2,   /**< metadata, and reserve the space with fallocate */
    QCOW2_PREALLOC_FULL = 3      /**< metadata, and write zeroes to every data cluster */
} qcow2_prealloc;

#define QCOW2_CREATE_OPTS_VERSION 1

/** Options for qcow2_image_create(). Initialise with QCOW2_CREATE_OPTS_INIT. */
typedef struct qcow2_create_opts {
    unsigned version;           /**< QCOW2_CREATE_OPTS_VERSION */
    qcow2_format format;        /**< QCOW2_FORMAT_QCOW2 or QCOW2_FORMAT_RAW */
    uint64_t size;              /**< virtual size in bytes; 0 with a backing file = its size */
    uint32_t qcow2_version;     /**< 2 (compat=0.10) or 3 (compat=1.1) */
    uint32_t cluster_size;      /**< bytes, a power of two from 512 to 2 MiB */
    uint32_t refcount_bits;     /**< 1, 2, 4, 8, 16, 32 or 64 (v2: 16 only) */
    bool extended_l2;           /**< subclusters (v3, clusters of at least 16 KiB) */
    uint32_t compression_type;  /**< 0 deflate ("zlib"), 1 zstd (v3 only) */
    bool lazy_refcounts;        /**< v3 only */
    qcow2_prealloc preallocation; /**< how much to allocate up front */
    const char *backing_file;   /**< stored as given (relative names stay relative), or NULL */
    const char *backing_format; /**< "raw" or "qcow2"; required with backing_file */
    qcow2_io_open_fn open_fn;   /**< how files are opened and created; NULL = POSIX */
    void *open_payload;         /**< passed to open_fn */
} qcow2_create_opts;

#define QCOW2_CREATE_OPTS_INIT                                                                     \
    {QCOW2_CREATE_OPTS_VERSION, QCOW2_FORMAT_QCOW2, 0, 3, 65536, 16, false, 0, false,             \
     QCOW2_PREALLOC_OFF, NULL, NULL, NULL, NULL}

/**
 * Create an image file (replacing none: an existing file is QCOW2_EEXISTS).
 * The backing file, when given, is opened to check it and to take its size
 * when opts->size is 0; it is never written. The size is rounded up to a
 * multiple of 512 bytes, as qemu-img does. A file this call made is removed
 * again when a later step fails (with the default open_fn).
 * @param[in] path  the new file
 * @param[in] opts  options (required: start from QCOW2_CREATE_OPTS_INIT)
 * @return 0; QCOW2_EINVAL (bad option or size, unknown opts->version, NULL
 *         argument), QCOW2_EEXISTS, QCOW2_ENOTFOUND (backing file or
 *         directory), QCOW2_EREADONLY (no permission), QCOW2_EIO, QCOW2_ENOSPC.
 *         Thread-safe (no handle is shared).
 */
QCOW2_API int qcow2_image_create(const char *path, const qcow2_create_opts *opts);

/**
 * Create an image in an empty I/O backend, as qcow2_image_create() does.
 * @param[in] io    the backend, empty and writable; it stays the caller's (it
 *                  is not closed, also on failure, when it holds a partial image)
 * @param[in] name  used in messages and to resolve a relative backing name
 * @param[in] opts  options (required)
 * @return the codes of qcow2_image_create() but QCOW2_EEXISTS
 */
QCOW2_API int qcow2_image_create_io(qcow2_io *io, const char *name, const qcow2_create_opts *opts);

/**
 * Write guest data. Allocates clusters as needed and copies on write the
 * untouched part of a cluster (or subcluster) from the backing chain or from
 * a cluster shared with an internal snapshot. The data is durable after the
 * next successful qcow2_image_flush(). A failed metadata update puts the
 * handle in the sticky FATAL state (later writes return QCOW2_EFATAL).
 * @param[in] img        an image opened with QCOW2_OPEN_RDWR
 * @param[in] buf        len bytes of data
 * @param[in] len        bytes to write (0 is allowed)
 * @param[in] guest_off  guest offset; [guest_off, guest_off + len) must lie
 *                       within the virtual size
 * @return 0; QCOW2_EINVAL (beyond the virtual size, NULL buf),
 *         QCOW2_EREADONLY (opened read-only, or marked corrupt), QCOW2_EFATAL,
 *         QCOW2_ECORRUPT, QCOW2_EIO, QCOW2_ENOSPC, QCOW2_ENOMEM
 */
QCOW2_API int qcow2_image_write(qcow2_image *img, const void *buf, size_t len, uint64_t guest_off);

#define QCOW2_ZERO_MAY_UNMAP 0x1 /**< write_zeroes may free the clusters (qemu-io write -z -u) */

/**
 * Make a guest range read as zeroes: zero clusters (or subclusters) where the
 * format has them (v3), explicit zero data elsewhere (v2); a hole punched in
 * the file for raw images.
 * @param[in] img        an image opened with QCOW2_OPEN_RDWR
 * @param[in] guest_off  start, bytes (the range must lie within the virtual size)
 * @param[in] len        bytes (0 is allowed)
 * @param[in] flags      0 or QCOW2_ZERO_MAY_UNMAP
 * @return as qcow2_image_write()
 */
QCOW2_API int qcow2_image_write_zeroes(qcow2_image *img, uint64_t guest_off, uint64_t len,
                                       unsigned flags);

/**
 * Discard whole clusters of a guest range (the unaligned head and tail are
 * left alone), as qemu does: in v3 they read as zeroes afterwards; in v2 they
 * become unallocated when there is no backing file, and are kept otherwise.
 * The freed space is punched out of the file.
 * @param[in] img        an image opened with QCOW2_OPEN_RDWR
 * @param[in] guest_off  start, bytes (the range must lie within the virtual size)
 * @param[in] len        bytes (0 is allowed)
 * @return as qcow2_image_write()
 */
QCOW2_API int qcow2_image_discard(qcow2_image *img, uint64_t guest_off, uint64_t len);

/**
 * Write whole clusters compressed with the image's compression type.
 * guest_off must be cluster aligned and len a multiple of the cluster size
 * (or reach the virtual size). A cluster that does not shrink is written
 * uncompressed, as qemu does.
 * @param[in] img        a qcow2 image opened with QCOW2_OPEN_RDWR
 * @param[in] buf        len bytes of data
 * @param[in] len        bytes, a multiple of the cluster size (or up to the end)
 * @param[in] guest_off  cluster-aligned guest offset
 * @return as qcow2_image_write(); also QCOW2_EUNSUPPORTED (raw image) and
 *         QCOW2_EINVAL (misaligned range)
 */
QCOW2_API int qcow2_image_write_compressed(qcow2_image *img, const void *buf, size_t len,
                                           uint64_t guest_off);

/**
 * Make every write so far durable, with crash-safe ordering of the metadata
 * (cached L2 and refcount tables are written back, then the backend's flush).
 * A failure puts the handle in the FATAL state.
 * @param[in] img  the image; on a read-only handle this does nothing
 * @return 0; QCOW2_EIO, QCOW2_ENOSPC, QCOW2_EFATAL (an earlier failure),
 *         QCOW2_EREADONLY (the image is marked corrupt)
 */
QCOW2_API int qcow2_image_flush(qcow2_image *img);

/**
 * Change the virtual size. Growing always works; shrinking only when nothing
 * is allocated past the new size (unless allow_shrink discards it). The new
 * size is durable when the call returns. Bytes cut off inside the last
 * cluster are zeroed, and a grown range reads as zeroes, also where the
 * backing file (when it is open) is longer than the old size, except where
 * the vm-state area (qcow2_vmstate_offset()) held data: as in qemu, that
 * becomes guest data.
 * @param[in] img           an image opened with QCOW2_OPEN_RDWR
 * @param[in] new_size      bytes
 * @param[in] allow_shrink  discard data allocated past new_size
 * @return 0; QCOW2_EINVAL (too large, or data past a smaller size without
 *         allow_shrink), QCOW2_EUNSUPPORTED (shrinking an image with internal
 *         snapshots), QCOW2_EREADONLY, QCOW2_EFATAL, QCOW2_EIO, QCOW2_ENOSPC
 */
QCOW2_API int qcow2_image_resize(qcow2_image *img, uint64_t new_size, bool allow_shrink);

/**
 * The cluster size of this layer, the unit of allocation.
 * @param[in] img  the image (not NULL)
 * @return bytes; 512 for raw images (for alignment purposes)
 */
QCOW2_API uint32_t qcow2_image_cluster_size(const qcow2_image *img);

/* ---- vm-state area --------------------------------------------------------- */

/**
 * The guest offset where the vm-state area of a qcow2 image starts: the area
 * a hypervisor's savevm writes a VM's memory and device state to, mapped by
 * the active L1 table past the entries the virtual size needs. It starts at
 * the virtual size rounded up to the coverage of one L2 table (cluster size
 * times entries per L2 table), so it moves when the image is resized.
 * @param[in] img  the image (not NULL)
 * @return bytes; 0 for raw images (which have no vm-state area)
 */
QCOW2_API uint64_t qcow2_vmstate_offset(const qcow2_image *img);

/**
 * Read from the vm-state area, as qemu's bdrv_load_vmstate() (qemu-io
 * `read -b`) does: what this image holds there, else what its backing file
 * holds at the same guest offset (the backing file's own guest data, as
 * qemu reads it), else zeroes. Never written ranges read as zeroes.
 * @param[in] img   a qcow2 image
 * @param[out] buf  len bytes
 * @param[in] len   bytes to read (0 is allowed)
 * @param[in] pos   offset in the area; pos + len + qcow2_vmstate_offset()
 *                  must not pass INT64_MAX
 * @return 0; QCOW2_EUNSUPPORTED (raw image), QCOW2_EINVAL (out of reach, NULL
 *         buf), QCOW2_ECORRUPT, QCOW2_EIO, QCOW2_ENOMEM
 */
QCOW2_API int qcow2_vmstate_read(qcow2_image *img, void *buf, size_t len, uint64_t pos);

/**
 * Write to the vm-state area (qemu's bdrv_save_vmstate(), qemu-io `write -b`).
 * The active L1 table grows to map the range when needed: the new table is
 * written and flushed before the header points at it (at the next flush),
 * and the old one is freed after. Internal snapshots taken later share the
 * area's clusters like guest data (qemu-img snapshot does the same; neither
 * records a vm_state_size). Durability and errors as qcow2_image_write().
 * @param[in] img  a qcow2 image opened with QCOW2_OPEN_RDWR
 * @param[in] buf  len bytes
 * @param[in] len  bytes (0 is allowed)
 * @param[in] pos  offset in the area
 * @return 0; QCOW2_EUNSUPPORTED (raw image), QCOW2_EINVAL (the range ends
 *         past what an L1 table of the maximum size (32 MiB) maps, or out of reach,
 *         NULL buf), and the codes of qcow2_image_write()
 */
QCOW2_API int qcow2_vmstate_write(qcow2_image *img, const void *buf, size_t len, uint64_t pos);


/* ---- layer operations ----------------------------------------------------- */

#define QCOW2_COMMIT_OPTS_VERSION 1

/** Options for qcow2_image_commit(). Initialise with QCOW2_COMMIT_OPTS_INIT. */
typedef struct qcow2_commit_opts {
    unsigned version;            /**< QCOW2_COMMIT_OPTS_VERSION */
    const qcow2_image *base;     /**< layer of top's chain to commit into; NULL = top's backing */
    bool keep_top;               /**< do not empty top (and the layers between) afterwards (-d) */
    qcow2_progress_fn progress;  /**< progress callback, or NULL */
    void *payload;               /**< passed to progress */
} qcow2_commit_opts;

#define QCOW2_COMMIT_OPTS_INIT {QCOW2_COMMIT_OPTS_VERSION, NULL, false, NULL, NULL}

/**
 * Offline block commit (qemu-img commit): write the guest content that top
 * and the layers between top and base allocate down into base (raw or
 * qcow2), growing base when top is larger. Only ranges allocated above base
 * are copied; zero ranges become zero clusters (qcow2 base) or holes (raw).
 * base is reopened for writing for the duration of the call.
 *
 * Crash safety: base holds the data durably before anything else changes.
 * Then, unless keep_top, top is emptied and, when base is not top's own
 * backing file, top's backing link is rewritten to point at base (the
 * layers between drop out of the chain). A crash at any point leaves every
 * guest-visible content recoverable.
 *
 * @param[in] top   the image to commit; opened with QCOW2_OPEN_RDWR unless
 *                  keep_top
 * @param[in] opts  options, or NULL (commit into top's backing file, then
 *                  empty top)
 * @return 0; QCOW2_EINVAL (base not in the chain, no backing file),
 *         QCOW2_EUNSUPPORTED (top has internal snapshots and would be
 *         emptied), QCOW2_EBUSY (base is locked by another user),
 *         QCOW2_EREADONLY, QCOW2_EFATAL, QCOW2_EIO, QCOW2_ENOSPC
 */
QCOW2_API int qcow2_image_commit(qcow2_image *top, const qcow2_commit_opts *opts);

/**
 * Change img's backing file (qemu-img rebase). backing NULL removes it.
 * Safe mode (unsafe false) first copies into img every range where the old
 * and the new backing chains differ and img does not allocate, so img's
 * guest content does not change; unsafe mode only rewrites the name and
 * format in the header. The name is stored as given; a relative name is
 * resolved against img's directory. The in-memory chain below img is
 * replaced by the new one (pointers to the old backing layers become invalid).
 *
 * @param[in] img             a qcow2 image opened with QCOW2_OPEN_RDWR
 * @param[in] backing         the new backing name, or NULL (or "") for none
 * @param[in] backing_format  its format name ("raw", "qcow2"), or NULL to
 *                            probe it
 * @param[in] unsafe          rewrite the header only
 * @param[in] progress        progress callback (safe mode), or NULL
 * @param[in] payload         passed to progress
 * @return 0; QCOW2_ENOTFOUND (new backing missing), QCOW2_EUNSUPPORTED (raw
 *         image, unknown backing format), QCOW2_EBUSY (the new backing is
 *         locked), QCOW2_EREADONLY, QCOW2_EFATAL, QCOW2_ECORRUPT, QCOW2_EIO,
 *         QCOW2_ENOSPC
 */
QCOW2_API int qcow2_image_rebase(qcow2_image *img, const char *backing, const char *backing_format,
                                 bool unsafe, qcow2_progress_fn progress, void *payload);

/**
 * Offline stream (qemu's block-stream): copy into img every range that img
 * does not allocate but a layer between img and base does (base exclusive;
 * NULL = the whole chain), then make base img's backing file (named as the
 * layer just above base names it, re-expressed relative to img). Afterwards
 * the layers between are no longer needed by img. img must be open for
 * writing; the in-memory chain is replaced as by qcow2_image_rebase().
 * @param[in] img       a qcow2 image opened with QCOW2_OPEN_RDWR
 * @param[in] base      a layer of img's chain, or NULL
 * @param[in] progress  progress callback, or NULL
 * @param[in] payload   passed to progress
 * @return 0; QCOW2_EINVAL (base not in the chain), QCOW2_EUNSUPPORTED (raw
 *         image), QCOW2_EREADONLY, QCOW2_EFATAL, QCOW2_EIO, QCOW2_ENOSPC
 */
QCOW2_API int qcow2_image_stream(qcow2_image *img, const qcow2_image *base,
                                 qcow2_progress_fn progress, void *payload);

/**
 * Drop every allocation of a qcow2 image so all of it reads through to the
 * backing chain again (what qemu-img commit does to the top afterwards).
 * Internal snapshots are refused (QCOW2_EUNSUPPORTED). img must be open for
 * writing.
 * @param[in] img  a qcow2 image opened with QCOW2_OPEN_RDWR
 * @return 0; QCOW2_EUNSUPPORTED (raw image, internal snapshots),
 *         QCOW2_EREADONLY, QCOW2_EFATAL, QCOW2_EIO
 */
QCOW2_API int qcow2_image_make_empty(qcow2_image *img);

/** What qcow2_measure() computes, with qemu-img measure's meaning. */
typedef struct qcow2_measure_result {
    uint64_t required;        /**< bytes a new image needs for the source's allocated data */
    uint64_t fully_allocated; /**< bytes a fully allocated image of that size needs */
    bool has_bitmaps;         /**< the source can carry bitmaps (qcow2 to qcow2) */
    uint64_t bitmaps;         /**< bytes for bitmaps (none are copied: always 0) */
} qcow2_measure_result;

/**
 * Measure the file size a new image would need (qemu-img measure): for the
 * content of src (whole chain; NULL to measure an empty image of size
 * bytes) in the format and with the options of opts (NULL = qcow2 defaults).
 * @param[in] src   the source image, or NULL
 * @param[in] size  virtual size when src is NULL (ignored otherwise)
 * @param[in] opts  the target's creation options, or NULL
 * @param[out] out  the figures
 * @return 0; QCOW2_EINVAL (bad options, a size too large for the cluster
 *         size), QCOW2_ECORRUPT, QCOW2_EIO (reading src)
 */
QCOW2_API int qcow2_measure(qcow2_image *src, uint64_t size, const qcow2_create_opts *opts,
                            qcow2_measure_result *out);

/* ---- internal snapshots --------------------------------------------------- */

#define QCOW2_SNAPSHOT_OPTS_VERSION 1

/** Options for qcow2_snapshot_create(). Initialise with QCOW2_SNAPSHOT_OPTS_INIT. */
typedef struct qcow2_snapshot_opts {
    unsigned version;       /**< QCOW2_SNAPSHOT_OPTS_VERSION */
    const char *id;         /**< id string; NULL = one more than the largest numeric id (qemu's rule) */
    uint32_t date_sec;      /**< creation time; 0 with date_nsec 0 = now */
    uint32_t date_nsec;     /**< and nanoseconds */
    uint64_t vm_clock_nsec; /**< guest run time to record (qemu-img writes 0) */
    int64_t icount;         /**< instruction count to record, -1 for none (qemu-img 7.2 writes 0) */
} qcow2_snapshot_opts;

#define QCOW2_SNAPSHOT_OPTS_INIT {QCOW2_SNAPSHOT_OPTS_VERSION, NULL, 0, 0, 0, 0}

/**
 * Find an internal snapshot by id or, when no id matches, by name (the first
 * match), as qemu-img snapshot -a/-d do.
 * @param[in] img        the image
 * @param[in] snapshot   an id or a name
 * @param[out] index_out  its index for qcow2_snapshot_get()
 * @return 0; QCOW2_ENOTFOUND (none matches, or a raw image), QCOW2_EINVAL
 *         (NULL argument)
 */
QCOW2_API int qcow2_snapshot_find(const qcow2_image *img, const char *snapshot, size_t *index_out);

/**
 * Create an internal snapshot of the active state (qemu-img snapshot -c):
 * no data is copied; the active L1 is copied, every cluster it reaches gains
 * a reference, and later writes copy on write. The entry records the
 * current virtual size, no VM state, and the time now. A crash or an error
 * at any point leaves either the old image or the new one, plus leaked
 * clusters at worst (see the notes in snap_edit.c); after an error in the
 * middle the handle is FATAL.
 *
 * @param[in] img   a qcow2 image opened with QCOW2_OPEN_RDWR
 * @param[in] name  the snapshot's name (1 to 65535 bytes); must be unused
 * @param[in] opts  options, or NULL for qemu-img's defaults
 * @return 0; QCOW2_EEXISTS (name or id in use), QCOW2_EREADONLY,
 *         QCOW2_EUNSUPPORTED (raw image, a dirty lazy-refcounts image,
 *         persistent bitmaps, an external data file, a refcount that would
 *         overflow refcount_bits), QCOW2_ECORRUPT, QCOW2_EIO, QCOW2_ENOSPC,
 *         QCOW2_EFATAL
 */
QCOW2_API int qcow2_snapshot_create(qcow2_image *img, const char *name,
                                    const qcow2_snapshot_opts *opts);

/**
 * Revert the active state to an internal snapshot (qemu-img snapshot -a),
 * found by id or name. The virtual size becomes the snapshot's disk size.
 * The snapshot stays. Crash-safe like qcow2_snapshot_create(): the new
 * active L1 is written to new clusters and switched by one header write.
 * @param[in] img       a qcow2 image opened with QCOW2_OPEN_RDWR
 * @param[in] snapshot  id or name
 * @return 0; QCOW2_ENOTFOUND, and the codes of qcow2_snapshot_create()
 */
QCOW2_API int qcow2_snapshot_apply(qcow2_image *img, const char *snapshot);

/**
 * Delete an internal snapshot (qemu-img snapshot -d), found by id or name;
 * the clusters only it used are freed. Strings of qcow2_snapshot_info
 * taken earlier become invalid.
 * @param[in] img       a qcow2 image opened with QCOW2_OPEN_RDWR
 * @param[in] snapshot  id or name
 * @return 0; QCOW2_ENOTFOUND, and the codes of qcow2_snapshot_create()
 */
QCOW2_API int qcow2_snapshot_delete(qcow2_image *img, const char *snapshot);

/**
 * Bytes of the image file that deleting an internal snapshot would give
 * back: its L1 table, and every L2 table and data cluster that only it
 * references (each cluster whose refcount equals the number of times the
 * snapshot's tables reach it). Reads only; the image may be read-only.
 * @param[in]  img        a qcow2 image
 * @param[in]  snapshot   the snapshot's id or name, as for qcow2_snapshot_find()
 * @param[out] bytes_out  the bytes (0 on error)
 * @return 0; QCOW2_ENOTFOUND, QCOW2_EUNSUPPORTED (raw image), QCOW2_ECORRUPT,
 *         QCOW2_EIO, QCOW2_ENOMEM
 */
QCOW2_API int qcow2_snapshot_unique_bytes(qcow2_image *img, const char *snapshot,
                                          uint64_t *bytes_out);

/**
 * Make a read-only handle show an internal snapshot's content instead of
 * the active state (what qemu-img convert -l reads): reads, block status,
 * digest, compare and convert then see the snapshot, and the virtual size
 * is the snapshot's disk size. The backing chain is unchanged. Not for
 * qcow2_image_check() (which checks the active state).
 * @param[in] img       an image opened read-only
 * @param[in] snapshot  id or name
 * @return 0; QCOW2_ENOTFOUND, QCOW2_EINVAL (a read-write handle, NULL
 *         argument), QCOW2_ECORRUPT (the snapshot's table or size), QCOW2_EIO
 */
QCOW2_API int qcow2_image_view_snapshot(qcow2_image *img, const char *snapshot);

/**
 * qcow2_image_open() read-only (QCOW2_OPEN_RDWR is ignored), then
 * qcow2_image_view_snapshot(). On failure *out is NULL.
 * @param[out] out       the new handle, owned by the caller (qcow2_image_close())
 * @param[in] path       the image file
 * @param[in] snapshot   id or name
 * @param[in] opts       options, or NULL
 * @return the codes of both
 */
QCOW2_API int qcow2_image_open_snapshot(qcow2_image **out, const char *path, const char *snapshot,
                                        const qcow2_open_opts *opts);

/* ---- check and repair ----------------------------------------------------- */

#define QCOW2_CHECK_FIX_LEAKS 0x1  /**< free leaked clusters (qemu-img check -r leaks) */
#define QCOW2_CHECK_FIX_ERRORS 0x2 /**< also repair refcounts and flags (-r all) */

/** What qcow2_image_check() found, with qemu-img check's figures. */
typedef struct qcow2_check_result {
    uint64_t corruptions;         /**< errors in the image's metadata */
    uint64_t leaks;               /**< clusters with a refcount but no reference */
    uint64_t check_errors;        /**< errors that stopped the check itself (I/O) */
    /** repaired; a leaks-only repair also fixes COPIED flags (as qemu-img -r leaks does) */
    uint64_t corruptions_fixed;
    uint64_t leaks_fixed;         /**< with QCOW2_CHECK_FIX_LEAKS */
    uint64_t image_end_offset;    /**< first byte after the last used cluster */
    uint64_t total_clusters;      /**< guest clusters (virtual size / cluster size) */
    uint64_t allocated_clusters;  /**< guest clusters allocated in this layer */
    uint64_t fragmented_clusters; /**< allocated clusters not following their predecessor */
    uint64_t compressed_clusters; /**< compressed guest clusters */
    /** Optional: called with one line for each problem found (no newline). */
    void (*report)(const char *line, void *payload);
    void *payload; /**< passed to report */
} qcow2_check_result;

/**
 * Check a qcow2 image's metadata (refcounts against references, COPIED flags,
 * offsets within the file, overlapping structures) and optionally repair it.
 * Set out->report (and payload) before the call to receive each finding.
 * Repair needs a handle opened with QCOW2_OPEN_RDWR (and works on an image
 * marked corrupt, which it clears when nothing is left to fix); open with
 * QCOW2_OPEN_CHECK to see a dirty image as it is. report is called on the
 * calling thread during the check.
 * @param[in] img      the image
 * @param[in] fix      0, or QCOW2_CHECK_FIX_* flags
 * @param[in,out] out  in: report and payload; out: the counters (the other
 *                     fields are reset first)
 * @return 0 when the check ran (look at the counters), QCOW2_EUNSUPPORTED for
 *         raw images, QCOW2_EREADONLY for a repair on a read-only handle,
 *         QCOW2_EFATAL (a repair on a failed handle), QCOW2_EINVAL (unknown
 *         fix flags, NULL argument), QCOW2_EIO, QCOW2_ENOMEM.
 */
QCOW2_API int qcow2_image_check(qcow2_image *img, unsigned fix, qcow2_check_result *out);

#ifdef __cplusplus
}
#endif

#endif /* QCOW2_QCOW2_H */
