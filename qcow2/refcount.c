/*
 * Refcounts: the refcount table and refcount blocks. At open the table is
 * loaded and its size checked against the cap; refcount blocks are read on
 * demand. The writer and check build on these helpers.
 *
 * Invariants kept here (numbers from qcow2_format.h): (1) every reachable
 * cluster has refcount >= 1; (2) COPIED <=> refcount == 1 in the active tree;
 * (4) a new refcount block is complete on disk before the table points at it.
 */
#include <inttypes.h>

#include "qcow2_int.h"

int qcow2__refcount_load(qcow2_image *img)
{
    uint64_t bytes = (uint64_t)img->hdr.rt_clusters * img->cluster_size;
    uint8_t *raw;
    int rc;

    /* header.c checked bytes against QCOW2_MAX_REFTABLE_BYTES and the file size. */
    assert(bytes <= QCOW2_MAX_REFTABLE_BYTES);
    img->rt_entries = bytes / 8;
    img->reftable = qcow2__malloc((size_t)bytes);
    if (!img->reftable)
        return qcow2__nomem();
    raw = (uint8_t *)img->reftable;
    rc = qcow2__io_read(img->io, img->name, raw, (size_t)bytes, img->hdr.rt_off);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < img->rt_entries; i++)
        img->reftable[i] = qcow2__be64(raw + i * 8);
    return 0;
}

/* Decode refcount entry i from a refcount block buffer. */
static uint64_t refblock_get(const qcow2_image *img, const uint8_t *blk, uint64_t i)
{
    switch (img->refcount_bits) {
    case 1:
    case 2:
    case 4: {
        unsigned per_byte = 8 / img->refcount_bits;
        unsigned shift = (unsigned)(i % per_byte) * img->refcount_bits;
        return (uint64_t)(blk[i / per_byte] >> shift) & ((1u << img->refcount_bits) - 1);
    }
    case 8:
        return blk[i];
    case 16:
        return qcow2__be16(blk + i * 2);
    case 32:
        return qcow2__be32(blk + i * 4);
    default:
        return qcow2__be64(blk + i * 8);
    }
}

int qcow2__refcount_get(qcow2_image *img, uint64_t cluster_idx, uint64_t *out)
{
    uint64_t per_block = img->cluster_size * 8 / img->refcount_bits;
    uint64_t rt_idx = cluster_idx / per_block;
    uint64_t rb_idx = cluster_idx % per_block;
    uint64_t rb_off, byte_off;
    uint8_t entry[8];
    size_t entry_bytes;
    int rc;

    *out = 0;
    if (rt_idx >= img->rt_entries)
        return 0;
    if (img->reftable[rt_idx] & QCOW2_REFT_RESERVED_MASK)
        return qcow2__corrupt(img, "refcount table entry %" PRIu64 " has reserved bits set",
                              rt_idx);
    rb_off = img->reftable[rt_idx] & QCOW2_REFT_OFFSET_MASK;
    if (!rb_off)
        return 0;
    if ((rb_off & (img->cluster_size - 1)) || rb_off < img->cluster_size ||
        !qcow2__in_range(rb_off, img->cluster_size, img->file_size))
        return qcow2__corrupt(img,
                              "refcount block at 0x%" PRIx64 " (table entry %" PRIu64
                              ") is misaligned or outside the file",
                              rb_off, rt_idx);
    entry_bytes = img->refcount_bits >= 8 ? img->refcount_bits / 8 : 1;
    byte_off = img->refcount_bits >= 8 ? rb_idx * entry_bytes
                                       : rb_idx / (8 / img->refcount_bits);
    rc = qcow2__io_read(img->io, img->name, entry, entry_bytes, rb_off + byte_off);
    if (rc)
        return rc;
    /* Decode as if the block started at this entry's byte. */
    if (img->refcount_bits < 8)
        *out = refblock_get(img, entry, rb_idx % (8 / img->refcount_bits));
    else
        *out = refblock_get(img, entry, 0);
    return 0;
}
