/*
 * The qcow2 on-disk format: layout tables, bit masks, hard caps and the
 * numbered metadata invariants the engine keeps. This header is the
 * authority; docs/FORMAT.md repeats it for readers.
 *
 * All integers on disk are big-endian.
 *
 * HEADER (cluster 0)
 *   OFFSET SIZE DESCRIPTION
 *   0      4    magic "QFI\xfb"
 *   4      4    version (2 or 3)
 *   8      8    backing_file_offset (0 = none)
 *   16     4    backing_file_size (<= 1023)
 *   20     4    cluster_bits (9..21)
 *   24     8    size: virtual size in bytes
 *   32     4    crypt_method (0 none, 1 AES, 2 LUKS)
 *   36     4    l1_size: entries in the active L1
 *   40     8    l1_table_offset (cluster aligned)
 *   48     8    refcount_table_offset (cluster aligned)
 *   56     4    refcount_table_clusters
 *   60     4    nb_snapshots
 *   64     8    snapshots_offset (cluster aligned)
 *   -- v2 ends here (72 bytes) --
 *   72     8    incompatible_features
 *   80     8    compatible_features
 *   88     8    autoclear_features
 *   96     4    refcount_order (refcount_bits = 1 << order, order <= 6)
 *   100    4    header_length (>= 104, multiple of 8)
 *   104    1    compression_type (0 deflate, 1 zstd; non-zero iff incompat bit 3)
 *   105    7    padding
 *
 * HEADER EXTENSION: u32 type, u32 length, data, padded to 8. Ends with type 0.
 *
 * L1 ENTRY: bits 9-55 L2 table offset; bit 63 COPIED; others reserved.
 * L2 ENTRY (standard): bit 0 reads-as-zero (v3), bits 9-55 host offset,
 *   bit 62 compressed, bit 63 COPIED. Extended L2 adds a 64-bit bitmap:
 *   bits 0-31 subcluster allocated, bits 32-63 subcluster reads as zero.
 * COMPRESSED DESCRIPTOR: x = 62 - (cluster_bits - 8); bits 0..x-1 host byte
 *   offset, bits x..61 additional 512-byte sectors.
 * REFCOUNT TABLE ENTRY: bits 9-63 refcount block offset.
 *
 * INVARIANTS (tests and asserts cite them by number)
 *  (1) Every cluster reachable from the header, the active L1, a snapshot L1,
 *      the refcount table or the snapshot table has refcount >= 1.
 *  (2) In tables reachable from the active L1, COPIED is set iff the refcount
 *      of the cluster is exactly 1 (never on compressed clusters).
 *  (3) Write order for an allocating write: data -> refcount -> L2 -> L1 ->
 *      header, with a flush between steps that depend on each other.
 *  (4) A new table (L1, L2, refcount block, refcount table, snapshot table)
 *      is written in full and flushed before anything points at it.
 *  (5) No metadata structure overlaps another or the header cluster, and every
 *      offset lies within the file (checked before use: image bytes are input).
 */
#ifndef QCOW2_FORMAT_H
#define QCOW2_FORMAT_H

#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_V2_HEADER_LEN 72u
#define QCOW2_V3_HEADER_MIN 104u
#define QCOW2_V3_HEADER_LEN 112u /* what we write: includes compression_type + padding */

#define QCOW2_MIN_CLUSTER_BITS 9u
#define QCOW2_MAX_CLUSTER_BITS 21u
#define QCOW2_MIN_EXTL2_CLUSTER_BITS 14u
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_REFCOUNT_ORDER 6u

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY_BITNR 0
#define QCOW2_INCOMPAT_CORRUPT_BITNR 1
#define QCOW2_INCOMPAT_DATA_FILE_BITNR 2
#define QCOW2_INCOMPAT_COMPRESSION_BITNR 3
#define QCOW2_INCOMPAT_EXTL2_BITNR 4
#define QCOW2_INCOMPAT_DIRTY (1ull << QCOW2_INCOMPAT_DIRTY_BITNR)
#define QCOW2_INCOMPAT_CORRUPT (1ull << QCOW2_INCOMPAT_CORRUPT_BITNR)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << QCOW2_INCOMPAT_DATA_FILE_BITNR)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << QCOW2_INCOMPAT_COMPRESSION_BITNR)
#define QCOW2_INCOMPAT_EXTL2 (1ull << QCOW2_INCOMPAT_EXTL2_BITNR)
#define QCOW2_INCOMPAT_KNOWN_MASK                                                                  \
    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE |                    \
     QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2)

/* Compatible feature bits. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

/* Autoclear feature bits. */
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

#define QCOW2_COMPRESSION_ZLIB 0u
#define QCOW2_COMPRESSION_ZSTD 1u

/* Header extension types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u
#define QCOW2_FEATURE_ENTRY_LEN 48u

/* L1, L2 and refcount table entry masks. */
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull
#define QCOW2_REFT_RESERVED_MASK 0x1ffull

#define QCOW2_SUBCLUSTERS 32u
#define QCOW2_COMPRESSED_SECTOR 512u

/*
 * Hard caps. Image bytes are hostile input: every size read from a file is
 * checked against these before anything is allocated for it.
 */
/* Active or snapshot L1: 32 MiB, qemu's limit (2 PiB at 64 KiB clusters). */
#define QCOW2_MAX_L1_BYTES (32ull << 20)
/* Refcount table: 8 MiB, qemu's limit. */
#define QCOW2_MAX_REFTABLE_BYTES (8ull << 20)
/* Snapshots: qemu refuses more than 65536 entries or a 64 MiB table. */
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_SNAPSHOT_TABLE_BYTES (64ull << 20)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024u
/* Highest host offset an entry can hold (56 bits). */
#define QCOW2_MAX_HOST_OFFSET ((1ull << 56) - 1)
/* Virtual size: qemu caps at INT64_MAX rounded down to 512. */
#define QCOW2_MAX_VIRTUAL_SIZE (0x7fffffffffffffffull & ~511ull)
/* Bitmaps extension: qemu accepts at most 65535 bitmaps. */
#define QCOW2_MAX_BITMAPS 65535u
/* Header extensions: at most this many (each type may appear once anyway). */
#define QCOW2_MAX_EXTENSIONS 128u

#endif /* QCOW2_FORMAT_H */
