/*
 * libqcow2 internals shared between the library's files (and white-box
 * tests). Nothing here is installed; symbols use the qcow2__ prefix.
 */
#ifndef QCOW2_INT_H
#define QCOW2_INT_H

#include <assert.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2_format.h"

#define QCOW2_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define QCOW2_UNUSED(x) ((void)(x))

/* ---- errors (error.c) ---------------------------------------------------- */

/*
 * Record a failure on this thread and return code. The message is one line:
 * "NAME: what is wrong" when name is not NULL. Used as
 *   return qcow2__err(QCOW2_ECORRUPT, 0, img->name, "L1 table at 0x%llx ...", ...);
 */
int qcow2__err(int code, int sys_errno, const char *name, const char *fmt, ...) QCOW2_PRINTF(4, 5);
/* The thread's error record, kept aside while trying something whose failure is no error. */
#define QCOW2__ERR_MSG_MAX 512
struct qcow2__err_saved {
    int code;
    int sys_errno;
    char msg[QCOW2__ERR_MSG_MAX];
};
void qcow2__err_save(struct qcow2__err_saved *s);
void qcow2__err_restore(const struct qcow2__err_saved *s);
int qcow2__verr(int code, int sys_errno, const char *name, const char *fmt, va_list ap)
    QCOW2_PRINTF(4, 0);

/* Shorthand for the common class: corrupt metadata in img. */
#define qcow2__corrupt(img, ...) qcow2__err(QCOW2_ECORRUPT, 0, (img)->name, __VA_ARGS__)
#define qcow2__nomem() qcow2__err(QCOW2_ENOMEM, 0, NULL, "out of memory")

/* ---- checked arithmetic -------------------------------------------------- */

/* True on overflow. The one kind of helper allowed to be used in a condition. */
static inline bool qcow2__add_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_add_overflow(a, b, r);
}

static inline bool qcow2__mul_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_mul_overflow(a, b, r);
}

/* Whether byte ranges [a, b) and [c, d) share a byte (an empty range shares none). */
static inline bool qcow2__ranges_meet(uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    return a < b && c < d && a < d && c < b;
}

static inline uint64_t qcow2__min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static inline uint64_t qcow2__max(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static inline uint64_t qcow2__align_up(uint64_t v, uint64_t align)
{
    return (v + align - 1) & ~(align - 1);
}

/* ---- big-endian access ---------------------------------------------------- */

static inline uint16_t qcow2__be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t qcow2__be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t qcow2__be64(const uint8_t *p)
{
    return (uint64_t)qcow2__be32(p) << 32 | qcow2__be32(p + 4);
}

static inline void qcow2__put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void qcow2__put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void qcow2__put_be64(uint8_t *p, uint64_t v)
{
    qcow2__put_be32(p, (uint32_t)(v >> 32));
    qcow2__put_be32(p + 4, (uint32_t)v);
}

/* ---- memory (alloc.c) ---------------------------------------------------- */

/* Tests only: allocations of more than this many bytes fail (0, the default: none do). */
extern size_t qcow2__fail_alloc_over;
void *qcow2__malloc(size_t len);
void *qcow2__calloc(size_t n, size_t len);
void *qcow2__realloc(void *p, size_t len);
char *qcow2__strdup(const char *s);
char *qcow2__strndup(const char *s, size_t len);
void qcow2__free(void *p);

/* ---- I/O choke point (io.c) ---------------------------------------------- */

/*
 * Every engine access to a file goes through these. They turn a backend's
 * -errno into a QCOW2_E* code with a message naming the file (name).
 */
int qcow2__io_read(qcow2_io *io, const char *name, void *buf, size_t len, uint64_t off);
int qcow2__io_write(qcow2_io *io, const char *name, const void *buf, size_t len, uint64_t off);
int qcow2__io_flush(qcow2_io *io, const char *name);
/*
 * Make [off, off+len) of io share the storage of [src_off, src_off+len) of
 * src (reflink) when the backend and the file system can: 1 when shared, 0
 * when not (unaligned to QCOW2__CLONE_ALIGN, no support, another file
 * system: the caller copies), or a negative QCOW2_E* code on an I/O error.
 */
#define QCOW2__CLONE_ALIGN 4096u
#define QCOW2__PEND_SLOTS 8u /* shares put off at once (share.c) */
int qcow2__io_clone(qcow2_io *io, const char *name, uint64_t off, qcow2_io *src, uint64_t src_off,
                    uint64_t len);
/*
 * Write guest [guest_off, guest_off+len) of img with the bytes of src at
 * src_off, sharing their storage (reflink) where the file system can, and
 * copying where it cannot (write.c). 1 when written, 0 when the range does
 * not suit (not whole clusters, extended L2, clusters under 4 KiB, a raw or
 * unaligned source, a backend that cannot share): the caller writes it the
 * usual way. Negative QCOW2_E* codes as qcow2_image_write().
 */
int qcow2__write_shared(qcow2_image *img, uint64_t guest_off, uint64_t len, qcow2_io *src,
                        const char *src_name, uint64_t src_off);
/*
 * share.c: carry out the shares qcow2__write_shared() put off (copying
 * where the file system refuses them). Called before any metadata
 * write-back, any other write and any read of the chain; callers that batch
 * shares call it when done.
 */
int qcow2__share_drain(qcow2_image *img);
/* Write guest [guest, +len) from img->share_src at host: shared (put off) or copied. */
int qcow2__share_put(qcow2_image *img, uint64_t len, uint64_t host, uint64_t guest);
int qcow2__io_truncate(qcow2_io *io, const char *name, uint64_t size);
int qcow2__io_size(qcow2_io *io, const char *name, uint64_t *size_out);
/* Write zeroes over [off, off+len) in bounded pieces. */
int qcow2__io_write_zeroes(qcow2_io *io, const char *name, uint64_t off, uint64_t len);
int qcow2__io_punch(qcow2_io *io, const char *name, uint64_t off, uint64_t len);
/* Reserve [off, off+len) so it reads as zeroes (fallocate); writes zeroes where that is missing. */
int qcow2__io_allocate(qcow2_io *io, const char *name, uint64_t off, uint64_t len);
int qcow2__io_extent(qcow2_io *io, const char *name, uint64_t off, uint64_t len, uint64_t *run_out,
                     bool *is_hole);
int qcow2__io_allocated(qcow2_io *io, const char *name, uint64_t *size_out);
int qcow2__io_lock(qcow2_io *io, const char *name, qcow2_io_lock_mode mode);
/* 1: a and b are the same file, 0: they are not, -1: cannot tell (io_posix.c). */
int qcow2__io_same_file(qcow2_io *a, qcow2_io *b);
/* 1: path (links followed) names io's file, 0: it does not or does not exist, -1: cannot
 * tell (io_posix.c). */
int qcow2__io_is_path(qcow2_io *io, const char *path);
/* The image's durability barrier (skipped with QCOW2_OPEN_NO_FLUSH). */
int qcow2__sync(qcow2_image *img);
/* A read-ahead (or drop) hint to the backend; never fails. */
void qcow2__io_advise(qcow2_io *io, uint64_t off, uint64_t len, int advice);
/* Map a backend's -errno (or an open failure) to a code and message. */
int qcow2__io_error(int neg_errno, const char *name, const char *what);

/* ---- compression (compress.c): buffers only, no I/O ----------------------- */

/*
 * Decompress one cluster. src may carry trailing garbage up to the sector
 * end; exactly dst_len bytes must be produced. Returns 0 or QCOW2_ECORRUPT
 * (no message: the caller names the image and cluster).
 */
int qcow2__decompress(unsigned type, void *dst, size_t dst_len, const void *src, size_t src_len);
/*
 * Compress one cluster into dst (capacity dst_cap, which callers set to
 * cluster_size - 1). Returns the compressed length, 0 when the result would
 * not fit (store uncompressed), or a negative code.
 */
long qcow2__compress(unsigned type, void *dst, size_t dst_cap, const void *src, size_t src_len);

/* ---- hashing (hash.c) ----------------------------------------------------- */

typedef struct qcow2__hash qcow2__hash;
int qcow2__hash_new(qcow2__hash **out);
void qcow2__hash_update(qcow2__hash *h, const void *buf, size_t len);
/* Feed len zero bytes without a caller buffer. */
void qcow2__hash_zeroes(qcow2__hash *h, uint64_t len);
void qcow2__hash_final(qcow2__hash *h, uint8_t out[16]);
void qcow2__hash_free(qcow2__hash *h);

/* The image digest's record stream (docs/DIGEST.md): feed the guest content
 * in order, data and zero runs of any length, size bytes in all. */
#define QCOW2__DIGEST_BLOCK 4096u
typedef struct qcow2__digest qcow2__digest;
int qcow2__digest_new(qcow2__digest **out, uint64_t size);
void qcow2__digest_data(qcow2__digest *d, const uint8_t *buf, size_t len);
void qcow2__digest_zeroes(qcow2__digest *d, uint64_t len);
void qcow2__digest_final(qcow2__digest *d, uint8_t out[16]);
void qcow2__digest_free(qcow2__digest *d);

/* ---- the image handle ---------------------------------------------------- */

/* A feature-name table entry (extension 0x6803f857). */
struct qcow2__feature {
    uint8_t type;  /* 0 incompatible, 1 compatible, 2 autoclear */
    uint8_t bit;   /* 0..63 */
    char name[47]; /* NUL-terminated copy of the 46-byte field */
};

/* A header extension this library does not interpret, kept to be rewritten. */
struct qcow2__ext {
    uint32_t type;  /* extension type */
    uint32_t len;   /* payload bytes */
    uint8_t *data;  /* payload */
};

/* One internal snapshot, parsed from the snapshot table. */
struct qcow2__snapshot {
    uint64_t l1_off;        /* host offset of its L1 table */
    uint32_t l1_size;       /* entries */
    uint32_t date_sec;      /* creation time */
    uint32_t date_nsec;
    uint64_t vm_clock_nsec; /* guest run time */
    uint64_t vm_state_size; /* bytes (64-bit extra field when present) */
    uint64_t disk_size;     /* virtual size at creation; current size when absent */
    int64_t icount;         /* -1 when absent */
    uint32_t extra_len;     /* extra_data_size as stored */
    uint8_t *extra;         /* the whole extra data, kept verbatim */
    char *id;               /* id string */
    char *name;             /* name */
};

/* Native copy of the header; disk bytes are never cast to a struct. */
struct qcow2__hdr {
    uint32_t version;           /* 2 or 3 */
    uint64_t backing_off;       /* bytes; 0 = none */
    uint32_t backing_len;       /* bytes */
    uint32_t cluster_bits;      /* 9..21 */
    uint64_t size;              /* virtual size, bytes */
    uint32_t crypt_method;      /* 0 */
    uint32_t l1_size;           /* entries */
    uint64_t l1_off;            /* bytes */
    uint64_t rt_off;            /* refcount table offset, bytes */
    uint32_t rt_clusters;       /* refcount table length, clusters */
    uint32_t nb_snapshots;      /* entries */
    uint64_t snap_off;          /* bytes */
    uint64_t incompat;          /* incompatible feature bits */
    uint64_t compat;            /* compatible feature bits */
    uint64_t autoclear;         /* autoclear feature bits */
    uint32_t refcount_order;    /* refcount_bits = 1 << order */
    uint32_t header_len;        /* bytes (72 for v2) */
    uint8_t compression_type;   /* 0 deflate, 1 zstd */
    uint8_t *tail;              /* header bytes past 112 that we do not know, kept */
    uint32_t tail_len;          /* bytes */
};

/* One slot of a metadata cache: a whole table (L2 table or refcount block). */
struct qcow2__cslot {
    uint64_t off;     /* host offset of the table; 0 = empty slot */
    uint64_t used;    /* LRU tick of the last use */
    uint8_t *data;    /* the table, big-endian as on disk */
    bool dirty;       /* newer than the file: written back by qcow2__metadata_flush() */
    bool checked;     /* found clear of the other metadata (qcow2__meta_overlap) since loaded */
};

/*
 * A set-associative cache of one-cluster tables. Slot buffers are allocated
 * on first use, so memory is bounded by the budget and by what was touched.
 */
struct qcow2__pool;
struct qcow2__cmap;

/* A raw layer's run of data or hole (read.c). */
struct qcow2__raw_run {
    uint64_t off;
    uint64_t len;
    bool hole;
};

enum qcow2__chart {
    QCOW2__CHART_UNKNOWN = 0, /* not charted yet */
    QCOW2__CHART_FULL,        /* raw_runs covers the file */
    QCOW2__CHART_NONE         /* too many runs, or charting failed: ask per read */
};

struct qcow2__cache {
    struct qcow2__cslot *slots; /* nb_slots slots */
    uint32_t nb_slots;          /* a multiple of the associativity, or less than it */
    uint32_t last;              /* slot of the last hit */
    uint64_t tick;              /* LRU clock */
    const char *what;           /* "L2 table" or "refcount block", for messages */
    struct qcow2__pool *pool;   /* where slot buffers come from (pool.c); NULL: malloc */
    size_t buf_len;             /* bytes per slot buffer: the cluster size */
};

/* A range of host clusters whose refcount drops once the metadata is durable. */
struct qcow2__pending_free {
    uint64_t host_off; /* bytes; for compressed data, the sector-aligned start */
    uint64_t len;      /* bytes */
};

/* Handle states; see the diagram in image.c. */
enum qcow2__state {
    QCOW2__OPEN_RO = 0,
    QCOW2__OPEN_RW = 1,
    QCOW2__FATAL = 2,
};

struct qcow2_image {
    /* What a read through a deep chain looks at in every layer it passes: kept together. */
    qcow2_format fmt;            /* RAW or QCOW2 */
    uint64_t size;               /* virtual size, bytes */
    qcow2_image *backing;        /* owned; NULL when none */
    uint64_t hole_start;         /* a run known unallocated here (no host cluster), start */
    uint64_t hole_end;           /* and end (bytes); empty when equal. Reset by any write. */

    qcow2_io *io;                /* the file */
    char *name;                  /* as opened; used in every message */
    enum qcow2__state state;     /* see image.c */
    uint64_t file_size;          /* file length at open (and as grown), bytes */
    unsigned depth;              /* 0 for the top of the chain */
    qcow2_open_opts opts;        /* as given (open_fn copied) */
    bool locked;                 /* we hold the image lock */

    /* qcow2 only below this line */
    struct qcow2__hdr hdr;       /* native header */
    uint32_t cluster_bits;       /* log2(cluster_size) */
    uint64_t cluster_size;       /* bytes */
    uint32_t l2_bits;            /* log2(entries per L2 table) */
    uint64_t l2_entries;         /* entries per L2 table */
    uint32_t l2e_bytes;          /* 8, or 16 with extended L2 */
    bool extl2;                  /* extended L2 entries (32 subclusters) */
    uint32_t sc_bits;            /* log2(subcluster size); = cluster_bits without extl2 */
    uint32_t refcount_bits;      /* 1..64 */
    uint64_t csize_shift;        /* compressed descriptor: sector-count shift */
    uint64_t csize_mask;         /* and mask */
    uint64_t coff_mask;          /* and host-offset mask */
    uint64_t *l1;                /* active L1, native order */
    uint64_t l1_alloc;           /* entries allocated in l1 (>= hdr.l1_size) */
    uint64_t *reftable;          /* refcount table, native order */
    uint64_t rt_entries;         /* entries in reftable */
    char *backing_name;          /* backing name as stored, or NULL */
    char *backing_fmt;           /* backing-format extension, or NULL */
    char *backing_path;          /* resolved path, or NULL */
    struct qcow2__feature *features; /* feature-name table */
    uint32_t nb_features;
    bool features_kept;          /* the table was read from the image: kept where cluster 0 has room */
    struct qcow2__ext *exts;     /* unknown extensions, in file order */
    uint32_t nb_exts;
    uint8_t *bitmaps_ext;        /* bitmaps extension payload, kept verbatim */
    uint32_t bitmaps_ext_len;
    uint32_t nb_bitmaps;
    uint64_t ext_end;            /* first byte after the extension area (and its end marker) */
    size_t hdr_bytes;            /* bytes of cluster 0 the header uses on disk */
    struct qcow2__snapshot *snaps; /* internal snapshots */
    uint32_t nb_snaps;
    struct qcow2__cache l2c;     /* L2 tables */
    struct qcow2__cache rbc;     /* refcount blocks */
    struct qcow2__pool *pool;    /* table memory shared with the rest of the chain (pool.c) */
    struct qcow2__cmap *cmap;    /* chain map for reads that start here (read.c), or NULL */
    bool cmap_quiet;             /* a data write of the top in progress: it updates its own map */
    uint64_t vm_end;             /* 0, or while vmstate.c reads: lookups in this layer reach here */
    bool repairing;              /* qcow2_image_check is fixing (refcount.c reports, does not stop) */
    bool rt_broken;              /* refcount table unusable (opened for check only): none in memory */

    /* writer state */
    bool l1_dirty;               /* the L1 in memory is newer than the file */
    bool rt_dirty;               /* the refcount table in memory is newer than the file */
    uint64_t meta_gen;           /* bumped whenever refcount metadata is placed */
    /*
     * The span [lo, hi) of the refcount blocks, for qcow2__meta_overlap: good
     * while rb_span_gen is meta_gen + 1 (0: never computed) for this table.
     */
    uint64_t rb_span_lo, rb_span_hi, rb_span_gen;
    const uint64_t *rb_span_table;
    bool header_dirty;           /* header fields changed: rewrite cluster 0 */
    bool write_started;          /* the first-write header update was made */
    uint64_t free_hint;          /* cluster index where the allocator starts looking */
    uint64_t alloc_end;          /* cluster index past every allocated cluster */
    uint64_t cbyte_off;          /* next free byte for compressed data; 0 = none */
    struct qcow2__pending_free *pending; /* frees applied at the next flush */
    size_t nb_pending, pending_alloc;
    uint8_t *cbuf;               /* compressed input buffer (2 clusters) */
    uint8_t *dbuf;               /* decompressed cluster */
    uint64_t dbuf_host_off;      /* descriptor decoded into dbuf; ~0 = none */
    uint64_t raw_ext_off;        /* raw: a known run of data or hole, start (bytes) */
    uint64_t raw_ext_len;        /* and length; 0 = nothing known */
    bool raw_ext_hole;           /* whether that run is a hole */
    enum qcow2__chart raw_chart; /* raw: whether the file's runs are charted (read.c) */
    struct qcow2__raw_run *raw_runs; /* the chart, in file order, covering the file */
    unsigned raw_nb_runs;
    bool prealloc_checked;       /* metadata_prealloc has been computed */
    bool metadata_prealloc;      /* looks preallocated: file holes in data read as zero */
    qcow2_io *share_src;         /* during qcow2__write_shared: the data's file, else NULL */
    const char *share_name;      /* and its name (messages) */
    uint64_t share_delta;        /* its offset for guest offset g: g + share_delta */
    /*
     * Shares put off (share.c, qcow2__share_put): each slot sends [from, +len) of src
     * to [host, +len) of this file in one FICLONERANGE, grown while later
     * pieces continue it in both files, and made before any table that can
     * point at it is written (qcow2__share_drain). pend_n slots in use.
     */
    struct qcow2__pend {
        qcow2_io *src;
        const char *name;
        uint64_t host, from, len;
        uint64_t used;           /* pend_tick when last grown */
    } pend[QCOW2__PEND_SLOTS];
    unsigned pend_n;
    uint64_t pend_tick;
    qcow2_io *share_refused;     /* a source this file could not share from: copied */
};

/* pool.c: table memory and the mapping generation shared by the layers of one chain. */
int qcow2__pool_new(struct qcow2__pool **out);
struct qcow2__pool *qcow2__pool_ref(struct qcow2__pool *p);
void qcow2__pool_unref(struct qcow2__pool *p);
void *qcow2__pool_get(struct qcow2__pool *p, size_t len);
void qcow2__pool_put(struct qcow2__pool *p, void *buf, size_t len);
/* The chain has three layers or more: worth huge pages from the first table on. */
void qcow2__pool_deep(struct qcow2__pool *p);
/* Bumped whenever any layer's mapping or the chain's shape changes; never 0. */
uint64_t qcow2__pool_gen(const struct qcow2__pool *p);
void qcow2__pool_bump(struct qcow2__pool *p);

/* read.c: the chain map (which layer answers for each guest unit). */
/* The top wrote [off, off+len): held = it now holds all of it (data), else walk it. */
void qcow2__cmap_wrote(qcow2_image *img, uint64_t off, uint64_t len, bool held);
void qcow2__cmap_free(qcow2_image *img);
/* A read that walks the chain layer by layer, never through the map (tests compare the two). */
int qcow2__read_walk(qcow2_image *img, void *buf, size_t len, uint64_t off);

/* header.c */
int qcow2__header_parse(qcow2_image *img, const uint8_t *buf, size_t buf_len);
void qcow2__header_free(qcow2_image *img);
/* The name of an incompatible/compatible/autoclear feature bit, or NULL. */
const char *qcow2__feature_name(const qcow2_image *img, unsigned type, unsigned bit);

/* header.c (writer): serialize cluster 0 from the native fields and write it. */
int qcow2__header_write(qcow2_image *img);
/* Serialize into buf (cluster_size bytes, zeroed by the caller); *used_out: bytes used. */
int qcow2__header_serialize(qcow2_image *img, uint8_t *buf, size_t buf_len, size_t *used_out);
/* Storage writes a sector whole or not at all: the unit of an atomic header update. */
#define QCOW2_HEADER_SECTOR 512u

/* cache.c */
/* most: the tables the image can have (UINT64_MAX: no bound, the image may grow). */
int qcow2__cache_init(qcow2_image *img, struct qcow2__cache *c, uint64_t budget, uint64_t most,
                      const char *what);
void qcow2__cache_free(struct qcow2__cache *c);
/*
 * The slot holding the table at host offset off. With load, a miss reads the
 * table from the file; without, a miss returns a zero-filled slot (a new
 * table the caller fills and marks dirty). The slot stays valid until the
 * next call on the same cache. Evicting a dirty slot flushes the metadata.
 */
int qcow2__cache_get(qcow2_image *img, struct qcow2__cache *c, uint64_t off, bool load,
                     struct qcow2__cslot **out);
/* Forget the table at off (freed). */
void qcow2__cache_drop(struct qcow2__cache *c, uint64_t off);
/* Write every dirty slot (no flush). */
int qcow2__cache_writeback(qcow2_image *img, struct qcow2__cache *c);
bool qcow2__cache_is_dirty(const struct qcow2__cache *c);

/* cluster.c: single-layer mapping with the L2 cache */
int qcow2__l2_cache_init(qcow2_image *img);
/* The two caches img would have read-only (ro) or writable, into l2 and rb (nothing on failure). */
int qcow2__l2_cache_make(qcow2_image *img, bool ro, struct qcow2__cache *l2,
                         struct qcow2__cache *rb);
void qcow2__l2_cache_free(qcow2_image *img);
/* The L1 or an L2 entry changed (or a whole new L1): forget remembered runs. */
/* A raw layer's bytes changed outside the write path (copy offload): forget its runs. */
static inline void qcow2__raw_changed(qcow2_image *img)
{
    img->raw_ext_len = 0;
    img->raw_chart = QCOW2__CHART_UNKNOWN;
}

static inline void qcow2__mapping_changed(qcow2_image *img)
{
    img->hole_start = img->hole_end = 0;
    /* The chain maps built over img go stale, except the top's own during its data write. */
    if (!img->cmap_quiet)
        qcow2__pool_bump(img->pool);
}
/* Load (through the cache) the L2 table at host offset l2_off; *table_out is borrowed. */
int qcow2__l2_load(qcow2_image *img, uint64_t l2_off, const uint8_t **table_out);
/* Validate the L2 table offset from L1 entry l1_idx. */
int qcow2__check_l2_offset(qcow2_image *img, uint64_t l1_idx, uint64_t l2_off);

/* Kinds of run within one layer (qcow2__layer_extent). */
enum qcow2__run {
    QCOW2__RUN_UNALLOC = 0, /* not here: read from backing (or zeroes) */
    QCOW2__RUN_ZERO,        /* reads as zeroes */
    QCOW2__RUN_DATA,        /* contiguous host bytes at host_off */
    QCOW2__RUN_COMPRESSED,  /* within one compressed cluster */
};

/* A run within one layer. */
struct qcow2__lrun {
    enum qcow2__run kind;
    uint64_t len;        /* bytes */
    uint64_t host_off;   /* DATA: host offset of the first byte; COMPRESSED: the L2 entry */
    bool has_off;        /* an allocated host cluster exists (ZERO_ALLOC, UNALLOC in allocated cluster) */
};

/*
 * The longest run starting at guest_off (< virtual size), at most len bytes,
 * of one kind in this layer alone. Validates every entry it touches.
 */
int qcow2__layer_extent(qcow2_image *img, uint64_t guest_off, uint64_t len, struct qcow2__lrun *out);

/* Read a compressed cluster's bytes [in_off, in_off+len) given its L2 entry. */
int qcow2__read_compressed(qcow2_image *img, uint64_t l2e, uint64_t in_off, void *buf, size_t len);

/* read.c: ask every layer below img (down to base) to read ahead the data of
 * [guest_off, guest_off + len) in the background. Bounded work; never fails. */
void qcow2__prefetch(qcow2_image *img, const qcow2_image *base, uint64_t guest_off, uint64_t len);
#define QCOW2_PREFETCH_WINDOW (32u << 20) /* guest bytes prefetched ahead of a copy loop */
/* In a loop now at guest_off: keep the prefetch two windows ahead (*pf_end: how far it got). */
void qcow2__prefetch_ahead(qcow2_image *img, const qcow2_image *base, uint64_t guest_off,
                           uint64_t *pf_end);

/* refcount.c */

int qcow2__refcount_load(qcow2_image *img);
int qcow2__refcount_table(qcow2_image *img);
/* The refcount of host cluster cluster_idx (0 when its block is not allocated). */
int qcow2__refcount_get(qcow2_image *img, uint64_t cluster_idx, uint64_t *out);
/*
 * Set the refcount of one cluster (in the refcount-block cache), allocating
 * the refcount block (and growing the refcount table) when there is none.
 * Fails with QCOW2_ECORRUPT when value does not fit refcount_bits.
 */
int qcow2__refcount_set(qcow2_image *img, uint64_t cluster_idx, uint64_t value);
/* Add delta to the refcount of every cluster touched by [host_off, host_off+len). */
int qcow2__refcount_update(qcow2_image *img, uint64_t host_off, uint64_t len, int64_t delta);
/* Allocate nb contiguous free clusters (refcount 1); *host_off_out in bytes. */
int qcow2__alloc_clusters(qcow2_image *img, uint64_t nb, uint64_t *host_off_out);
/* Allocate len bytes (< one cluster) for compressed data, packing clusters. */
int qcow2__alloc_bytes(qcow2_image *img, uint64_t len, uint64_t *host_off_out);
/* Queue a refcount decrement of [host_off, host_off+len), applied after the next metadata flush. */
int qcow2__free_later(qcow2_image *img, uint64_t host_off, uint64_t len);

/*
 * The metadata that [off, off+len) shares bytes with, or NULL: the header,
 * the active L1 table, the refcount table, the snapshot table, and with deep
 * also every snapshot's L1 table and every refcount block. Checked before
 * writing in place at an offset taken from the file, which a damaged or
 * hostile image can point at its own metadata.
 */
const char *qcow2__meta_overlap(const qcow2_image *img, uint64_t off, uint64_t len, bool deep);
/* The same, deep, plus the active L2 tables and the bitmap directory: what the
 * allocator checks every new cluster against (refcount.c). */
const char *qcow2__meta_overlap_all(const qcow2_image *img, uint64_t off, uint64_t len);
/* QCOW2_ECORRUPT unless every refcount block has a refcount of its own (resize --shrink). */
int qcow2__refcount_blocks_covered(qcow2_image *img);
/* Store refcount v for entry i of a refcount block held in memory (check.c's rebuild). */
void qcow2__refcount_put(const qcow2_image *img, uint8_t *blk, uint64_t i, uint64_t v);

/* Bytes of the snapshot table on disk now. */
uint64_t qcow2__snap_table_len(const qcow2_image *img);
/* Apply queued frees now (the metadata that referenced them is durable). */
int qcow2__apply_pending_frees(qcow2_image *img);
/* Host byte range of a compressed cluster's data per its descriptor (sector-aligned start). */
void qcow2__compressed_range(const qcow2_image *img, uint64_t l2e, uint64_t *host_off, uint64_t *len);

/* flush.c */
/*
 * Ordered flush of everything dirty: data -> refcount blocks -> L2 tables ->
 * L1 -> header, a flush between each, then queued frees (invariant 3). Any
 * failure puts the handle in the FATAL state.
 */
int qcow2__metadata_flush(qcow2_image *img);
/* Put the handle in the sticky error state (and, for detected corruption, mark the image corrupt). */
int qcow2__fatal(qcow2_image *img, int rc);
/* Make a handle writable state-wise: QCOW2_EREADONLY / QCOW2_EFATAL otherwise. */
int qcow2__check_writable(qcow2_image *img);
/* Flush and clear the dirty bit before close (no-op for read-only handles). */
int qcow2__close_flush(qcow2_image *img);
/* First write: drop the persistent bitmaps (header extension, then their clusters). */
int qcow2__drop_bitmaps(qcow2_image *img);

/* write.c */
/* Allocate every cluster of the virtual size (create's preallocation=). */
int qcow2__preallocate(qcow2_image *img, qcow2_prealloc mode);

/* write.c, for vmstate.c (the vm-state area lies past the virtual size). */
/* The checks and first-write header update of every mutating call, without a range. */
int qcow2__write_begin(qcow2_image *img);
/* Write whole clusters at guest_off, which may lie past the virtual size. */
int qcow2__write_clusters(qcow2_image *img, const void *buf, uint64_t len, uint64_t guest_off);
/* Move the active L1 to new clusters with room for need entries (<= the cap). */
int qcow2__grow_l1(qcow2_image *img, uint64_t need);

/* check.c: repair a dirty (lazy refcounts) image opened for writing, then mark it clean. */
int qcow2__repair_dirty(qcow2_image *img);

/* image.c: helpers for layer operations */
void qcow2__image_free(qcow2_image *img);
char *qcow2__resolve_backing(const char *image_name, const char *backing);
char *qcow2__relative_name(const char *image_name, const char *target_path);
char *qcow2__canonical_name(const qcow2_image *img);
/* Switch a layer between read-only and read-write (a new handle on the same file). */
int qcow2__reopen(qcow2_image *img, bool rw);

/* snapshot.c */
int qcow2__snapshots_load(qcow2_image *img);
void qcow2__snapshots_free(qcow2_image *img);
#define QCOW2__SNAP_HDR_LEN 40u /* fixed part of a snapshot table entry */
void qcow2__snap_entry_free(struct qcow2__snapshot *sn);
/* Index of the snapshot whose id is s, else the first whose name is s (qemu's lookup). */
int qcow2__snap_find(const qcow2_image *img, const char *s, uint32_t *idx_out);
/* Read an L1 table of n entries at off into a new native array (at least one entry). */
int qcow2__snap_read_l1(qcow2_image *img, uint64_t off, uint64_t n, uint64_t alloc_n,
                        uint64_t **out);

/* True when [off, off+len) lies within [0, limit). */
static inline bool qcow2__in_range(uint64_t off, uint64_t len, uint64_t limit)
{
    uint64_t end;
    return !qcow2__add_overflow(off, len, &end) && end <= limit;
}

#endif /* QCOW2_INT_H */
