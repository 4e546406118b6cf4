/*
 * Refcounts: the refcount table, refcount blocks (through the metadata
 * cache), the cluster allocator and deferred frees. write.c, create.c and
 * check.c build on these; image.c sets them up at open (the table itself is
 * read on first use by a read-only handle).
 *
 * Invariants kept here (numbers from qcow2_format.h):
 *  (1) every reachable cluster has refcount >= 1: a cluster's refcount is
 *      raised (in the cache) before anything can point at it, and the cache
 *      is written back before the tables that point at it (flush.c);
 *  (4) a new refcount block is complete on disk before the table points at
 *      it, and a new refcount table is complete before the header does;
 *  - a freed cluster keeps its refcount until the metadata that dropped the
 *      reference is durable (qcow2__free_later), so a crash leaks at worst.
 *
 * New refcount blocks go at the first cluster of the group they describe
 * (all of which is free, or the block would exist), so they describe
 * themselves. A refcount table that must grow moves to the end of the image
 * together with the new blocks that describe it.
 */
#include <inttypes.h>

#include "qcow2_int.h"

/*
 * Open time: what allocation needs, without the table itself. Read-only
 * layers (every backing file of a chain) never look at refcounts on the
 * read path, so the table is read on first use (qcow2__refcount_table):
 * a 64-deep chain then does not read and fault in 64 tables it never uses.
 * Writable handles read it at once, so a bad table shows at open.
 */
int qcow2__refcount_load(qcow2_image *img)
{
    img->alloc_end = (img->file_size + img->cluster_size - 1) >> img->cluster_bits;
    /* From cluster 0: a header cluster with refcount 0 is found, and refused, as qemu does. */
    img->free_hint = 0;
    if (img->state != QCOW2__OPEN_RW)
        return 0;
    return qcow2__refcount_table(img);
}

int qcow2__refcount_table(qcow2_image *img)
{
    uint64_t bytes = (uint64_t)img->hdr.rt_clusters * img->cluster_size;
    uint64_t *table;
    uint8_t *raw;
    int rc;

    if (img->reftable)
        return 0;
    if (img->rt_broken) {
        /* No table: every refcount reads 0, and nothing may be allocated (check rebuilds). */
        img->reftable = qcow2__calloc(1, sizeof(uint64_t));
        img->rt_entries = 0;
        img->meta_gen++;
        return img->reftable ? 0 : qcow2__nomem();
    }
    /* header.c checked bytes against QCOW2_MAX_REFTABLE_BYTES and the file size. */
    assert(bytes <= QCOW2_MAX_REFTABLE_BYTES);
    table = qcow2__malloc((size_t)bytes);
    if (!table)
        return qcow2__nomem();
    raw = (uint8_t *)table;
    rc = qcow2__io_read(img->io, img->name, raw, (size_t)bytes, img->hdr.rt_off);
    if (rc) {
        qcow2__free(table);
        return rc;
    }
    for (uint64_t i = 0; i < bytes / 8; i++)
        table[i] = qcow2__be64(raw + i * 8);
    img->reftable = table;
    img->rt_entries = bytes / 8;
    img->meta_gen++;
    return 0;
}

/* Entries per refcount block. */
static uint64_t per_block(const qcow2_image *img)
{
    return img->cluster_size * 8 / img->refcount_bits;
}

static uint64_t refcount_max(const qcow2_image *img)
{
    return img->refcount_bits == 64 ? UINT64_MAX : (1ull << img->refcount_bits) - 1;
}

static uint64_t block_get(const qcow2_image *img, const uint8_t *blk, uint64_t i)
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

static void block_put(const qcow2_image *img, uint8_t *blk, uint64_t i, uint64_t v)
{
    switch (img->refcount_bits) {
    case 1:
    case 2:
    case 4: {
        unsigned per_byte = 8 / img->refcount_bits;
        unsigned shift = (unsigned)(i % per_byte) * img->refcount_bits;
        unsigned mask = ((1u << img->refcount_bits) - 1) << shift;
        blk[i / per_byte] = (uint8_t)((blk[i / per_byte] & ~mask) | ((unsigned)v << shift));
        break;
    }
    case 8:
        blk[i] = (uint8_t)v;
        break;
    case 16:
        qcow2__put_be16(blk + i * 2, (uint16_t)v);
        break;
    case 32:
        qcow2__put_be32(blk + i * 4, (uint32_t)v);
        break;
    default:
        qcow2__put_be64(blk + i * 8, v);
        break;
    }
}

void qcow2__refcount_put(const qcow2_image *img, uint8_t *blk, uint64_t i, uint64_t v)
{
    block_put(img, blk, i, v);
}

static void note_used(qcow2_image *img, uint64_t cluster_idx)
{
    if (cluster_idx + 1 > img->alloc_end)
        img->alloc_end = cluster_idx + 1;
    img->file_size = qcow2__max(img->file_size, img->alloc_end << img->cluster_bits);
}

static int grow_reftable(qcow2_image *img, uint64_t need_idx);
static int alloc_check(qcow2_image *img, const char *what, uint64_t first, uint64_t nb);

/* Host offset of the refcount block for table index rt_idx (0: none), validated. */
static int block_offset(qcow2_image *img, uint64_t rt_idx, uint64_t *off_out)
{
    uint64_t e = img->reftable[rt_idx];
    uint64_t off = e & QCOW2_REFT_OFFSET_MASK;

    *off_out = 0;
    if (e & QCOW2_REFT_RESERVED_MASK)
        return qcow2__corrupt(img, "refcount table entry %" PRIu64 " has reserved bits set",
                              rt_idx);
    if (off && ((off & (img->cluster_size - 1)) || off < img->cluster_size ||
                !qcow2__in_range(off, img->cluster_size, img->file_size)))
        return qcow2__corrupt(img,
                              "refcount block at 0x%" PRIx64 " (table entry %" PRIu64
                              ") is misaligned or outside the file",
                              off, rt_idx);
    *off_out = off;
    return 0;
}

static int alloc_area(qcow2_image *img, uint64_t nb, const char *what, uint64_t *first_out);

/*
 * Give group rt_idx a refcount block (all its refcounts zero): the block is
 * allocated like any cluster, so its own refcount lives wherever that lands.
 */
static int create_block(qcow2_image *img, uint64_t rt_idx, uint64_t *off_out)
{
    uint64_t first;
    int rc;

    if (rt_idx == 0)
        return qcow2__corrupt(img, "refcount table entry 0 is empty (the header has no refcount)");
    uint8_t *zero;

    rc = alloc_area(img, 1, "a refcount block", &first);
    if (rc)
        return rc;
    zero = qcow2__calloc(1, (size_t)img->cluster_size);
    if (!zero)
        return qcow2__nomem();
    qcow2__cache_drop(&img->rbc, first << img->cluster_bits);
    rc = qcow2__io_write(img->io, img->name, zero, (size_t)img->cluster_size,
                         first << img->cluster_bits);
    qcow2__free(zero);
    if (rc)
        return rc;
    img->reftable[rt_idx] = first << img->cluster_bits;
    img->rt_dirty = true;
    img->meta_gen++;
    *off_out = first << img->cluster_bits;
    return 0;
}

/*
 * What the refcount block of group rt_idx at off overlaps: the fixed
 * metadata, a snapshot's L1 table, or another group's block (two groups
 * sharing one block would count each other's clusters). NULL when nothing.
 */
static const char *block_overlap(const qcow2_image *img, uint64_t rt_idx, uint64_t off)
{
    const char *what = qcow2__meta_overlap(img, off, img->cluster_size, false);

    if (what)
        return what;
    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        if (qcow2__ranges_meet(off, img->cluster_size, img->snaps[i].l1_off,
                               (uint64_t)img->snaps[i].l1_size * 8))
            return "a snapshot's L1 table";
    }
    for (uint64_t i = 0; i < img->rt_entries; i++) {
        if (i != rt_idx && (img->reftable[i] & QCOW2_REFT_OFFSET_MASK) == off)
            return "another refcount block";
    }
    return NULL;
}

/* The cache slot of the block for rt_idx; NULL (and 0) when there is none and !create. */
static int block_slot(qcow2_image *img, uint64_t rt_idx, bool create, struct qcow2__cslot **out)
{
    uint64_t off;
    int rc;

    *out = NULL;
    rc = qcow2__refcount_table(img);
    if (rc)
        return rc;
    if (rt_idx >= img->rt_entries) {
        if (!create)
            return 0;
        if (img->rt_broken)
            return qcow2__corrupt(img, "the refcount table is unusable; not writing refcounts");
        rc = grow_reftable(img, rt_idx);
        if (rc)
            return rc;
    }
    rc = block_offset(img, rt_idx, &off);
    if (rc)
        return rc;
    if (!off) {
        if (!create)
            return 0;
        rc = create_block(img, rt_idx, &off);
        if (rc)
            return rc;
    }
    rc = qcow2__cache_get(img, &img->rbc, off, true, out);
    if (rc || !create || (*out)->checked)
        return rc;
    {
        /*
         * About to be changed: it must not be other metadata. A repair
         * cannot move refcount blocks either: it reports the clusters that
         * block counts as not repaired and goes on with the others, rather
         * than write refcounts over an L1 table.
         */
        const char *what = block_overlap(img, rt_idx, off);
        if (what) {
            rc = qcow2__corrupt(img,
                                "refcount block at 0x%" PRIx64 " (table entry %" PRIu64
                                ") overlaps %s; not writing",
                                off, rt_idx, what);
            return img->repairing ? rc : qcow2__fatal(img, rc); /* marked corrupt, as qemu does */
        }
    }
    (*out)->checked = true;
    return 0;
}

int qcow2__refcount_get(qcow2_image *img, uint64_t cluster_idx, uint64_t *out)
{
    struct qcow2__cslot *slot;
    int rc;

    *out = 0;
    rc = block_slot(img, cluster_idx / per_block(img), false, &slot);
    if (rc || !slot)
        return rc;
    *out = block_get(img, slot->data, cluster_idx % per_block(img));
    return 0;
}

int qcow2__refcount_set(qcow2_image *img, uint64_t cluster_idx, uint64_t value)
{
    struct qcow2__cslot *slot;
    int rc;

    if (value > refcount_max(img))
        return qcow2__corrupt(img, "refcount of cluster %" PRIu64 " would overflow %u bits",
                              cluster_idx, img->refcount_bits);
    rc = block_slot(img, cluster_idx / per_block(img), true, &slot);
    if (rc)
        return rc;
    block_put(img, slot->data, cluster_idx % per_block(img), value);
    slot->dirty = true;
    if (value)
        note_used(img, cluster_idx);
    else if (cluster_idx < img->free_hint)
        img->free_hint = cluster_idx;
    return 0;
}

int qcow2__refcount_update(qcow2_image *img, uint64_t host_off, uint64_t len, int64_t delta)
{
    uint64_t first, last;

    if (len == 0)
        return 0;
    first = host_off >> img->cluster_bits;
    last = (host_off + len - 1) >> img->cluster_bits;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t cur;
        int rc = qcow2__refcount_get(img, c, &cur);

        if (rc)
            return rc;
        if (delta < 0 && cur < (uint64_t)-delta)
            return qcow2__corrupt(img, "refcount of cluster 0x%" PRIx64 " would drop below zero",
                                  c << img->cluster_bits);
        if (delta > 0 && cur > refcount_max(img) - (uint64_t)delta)
            return qcow2__corrupt(img, "refcount of cluster 0x%" PRIx64 " would overflow %u bits",
                                  c << img->cluster_bits, img->refcount_bits);
        rc =
            qcow2__refcount_set(img, c, delta < 0 ? cur - (uint64_t)-delta : cur + (uint64_t)delta);
        if (rc)
            return rc;
    }
    return 0;
}

/*
 * Move the refcount table to the end of the image with room for need_idx,
 * together with the new refcount blocks that describe the area it occupies.
 * Order: everything dirty flushed; new blocks and table written and flushed;
 * the header switched (one write, flushed); the old table freed.
 */
static int grow_reftable(qcow2_image *img, uint64_t need_idx)
{
    uint64_t pb = per_block(img);
    uint64_t per_cluster = img->cluster_size / 8;
    uint64_t new_entries = qcow2__max(need_idx + 1, img->rt_entries * 2);
    uint64_t t, k = 0, area, old_off = img->hdr.rt_off;
    uint64_t old_clusters = img->hdr.rt_clusters;
    uint64_t *table = NULL;
    uint8_t *raw = NULL;
    int rc;

    new_entries = qcow2__align_up(new_entries, per_cluster);
    if (new_entries * 8 > QCOW2_MAX_REFTABLE_BYTES)
        return qcow2__err(QCOW2_ENOSPC, 0, img->name, "the refcount table would exceed %llu bytes",
                          QCOW2_MAX_REFTABLE_BYTES);
    t = new_entries / per_cluster;
    area = qcow2__max(img->alloc_end, 1);

    /* How many new blocks the area [area, area + k + t) needs, including themselves. */
    for (;;) {
        uint64_t m = 0;
        uint64_t g_last = (area + k + t - 1) / pb;
        for (uint64_t g = area / pb; g <= g_last; g++) {
            if (g >= img->rt_entries || !(img->reftable[g] & QCOW2_REFT_OFFSET_MASK))
                m++;
        }
        if (m == k)
            break;
        k = m;
    }
    if ((area + k + t) << img->cluster_bits > QCOW2_MAX_HOST_OFFSET)
        return qcow2__err(QCOW2_ENOSPC, 0, img->name, "image would grow past 64 PiB");

    rc = alloc_check(img, "the refcount table", area, k + t);
    if (rc)
        return rc;
    /* Make everything that exists durable first: the switch below must not race it. */
    rc = qcow2__metadata_flush(img);
    if (rc)
        return rc;

    table = qcow2__calloc((size_t)new_entries, sizeof(uint64_t));
    raw = qcow2__calloc((size_t)t, (size_t)img->cluster_size);
    if (!table || !raw) {
        rc = qcow2__nomem();
        goto out;
    }
    memcpy(table, img->reftable, (size_t)img->rt_entries * 8);
    {
        uint64_t next = area, g_last = (area + k + t - 1) / pb;
        for (uint64_t g = area / pb; g <= g_last; g++) {
            if (!(table[g] & QCOW2_REFT_OFFSET_MASK))
                table[g] = (next++) << img->cluster_bits;
        }
        assert(next == area + k);
    }
    /* Refcount 1 for every cluster of the area, in new or existing blocks. */
    for (uint64_t c = area; c < area + k + t; c++) {
        uint64_t g = c / pb;
        uint64_t boff = table[g] & QCOW2_REFT_OFFSET_MASK;
        bool is_new = g >= img->rt_entries || !(img->reftable[g] & QCOW2_REFT_OFFSET_MASK);
        struct qcow2__cslot *slot;

        /* A new block starts zeroed on its first touch; later touches may find it evicted. */
        bool load = !is_new || (c != area && c % pb != 0);

        rc = qcow2__cache_get(img, &img->rbc, boff, load, &slot);
        if (rc)
            goto out;
        block_put(img, slot->data, c % pb, 1);
        slot->dirty = true;
    }
    rc = qcow2__cache_writeback(img, &img->rbc);
    if (rc)
        goto out;
    for (uint64_t i = 0; i < new_entries; i++)
        qcow2__put_be64(raw + i * 8, table[i]);
    rc = qcow2__io_write(img->io, img->name, raw, (size_t)(t * img->cluster_size),
                         (area + k) << img->cluster_bits);
    if (rc)
        goto out;
    rc = qcow2__sync(img);
    if (rc)
        goto out;
    qcow2__free(img->reftable);
    img->reftable = table;
    table = NULL;
    img->rt_entries = new_entries;
    img->rt_dirty = false;
    img->hdr.rt_off = (area + k) << img->cluster_bits;
    img->hdr.rt_clusters = (uint32_t)t;
    img->meta_gen++;
    note_used(img, area + k + t - 1);
    rc = qcow2__header_write(img);
    if (rc)
        goto out;
    /* The header no longer points at the old table. */
    rc = qcow2__refcount_update(img, old_off, old_clusters << img->cluster_bits, -1);
out:
    qcow2__free(table);
    qcow2__free(raw);
    return rc;
}

/*
 * The metadata that clusters [first, first + nb) would land on: the header,
 * the L1 and refcount tables, the snapshot table and snapshot L1 tables,
 * refcount blocks, active L2 tables and the bitmap directory. NULL when none.
 * Refcounts say which clusters are free; when they are wrong (a zeroed
 * refcount block, a header cluster with refcount 0), this is what stops a
 * new cluster from landing on metadata that is in use.
 */
static const char *alloc_overlap(qcow2_image *img, uint64_t first, uint64_t nb)
{
    /*
     * The span of the refcount blocks, so that an allocation clear of it is
     * not checked against every table entry (thousands, most of them empty:
     * a scan per allocated cluster was a quarter of a commit's CPU).
     */
    if (img->rb_span_gen != img->meta_gen + 1 || img->rb_span_table != img->reftable) {
        uint64_t lo = UINT64_MAX, hi = 0;

        for (uint64_t i = 0; i < img->rt_entries; i++) {
            uint64_t b = img->reftable[i] & QCOW2_REFT_OFFSET_MASK;
            if (b) {
                lo = qcow2__min(lo, b);
                hi = qcow2__max(hi, b + img->cluster_size);
            }
        }
        img->rb_span_lo = hi ? lo : 0;
        img->rb_span_hi = hi;
        img->rb_span_gen = img->meta_gen + 1;
        img->rb_span_table = img->reftable;
    }
    return qcow2__meta_overlap_all(img, first << img->cluster_bits, nb << img->cluster_bits);
}

const char *qcow2__meta_overlap_all(const qcow2_image *img, uint64_t off, uint64_t len)
{
    uint64_t cs = img->cluster_size;
    const char *what = qcow2__meta_overlap(img, off, len, true);

    if (what)
        return what;
    for (uint64_t i = 0; img->l1 && i < img->hdr.l1_size; i++) {
        uint64_t l2 = img->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (l2 && qcow2__ranges_meet(off, off + len, l2, l2 + cs))
            return "an active L2 table";
    }
    if (img->bitmaps_ext && img->bitmaps_ext_len >= 24) {
        uint64_t dsize = qcow2__be64(img->bitmaps_ext + 8);
        uint64_t doff = qcow2__be64(img->bitmaps_ext + 16);
        if (dsize && qcow2__ranges_meet(off, off + len, doff, doff + dsize))
            return "the bitmap directory";
    }
    return NULL;
}

/*
 * Refuse an allocation of what at clusters [first, first + nb) that meets
 * metadata in use (qemu: "Preventing invalid allocation"): what earlier calls
 * completed is flushed first, then the image is marked corrupt and the handle
 * stops writing. Nothing of this allocation reaches the file.
 */
static int alloc_check(qcow2_image *img, const char *what, uint64_t first, uint64_t nb)
{
    const char *hit = alloc_overlap(img, first, nb);
    int rc;

    if (!hit)
        return 0;
    if (!img->repairing && img->state == QCOW2__OPEN_RW)
        (void)qcow2__metadata_flush(img);
    rc = qcow2__corrupt(img,
                        "preventing invalid allocation of %s at 0x%" PRIx64
                        ": it overlaps %s (the refcounts are wrong; run "
                        "'qsnap image check -r all')",
                        what, first << img->cluster_bits, hit);
    return img->repairing ? rc : qcow2__fatal(img, rc);
}

/* True when group g has a refcount block. */
static bool group_has_block(const qcow2_image *img, uint64_t g)
{
    return g < img->rt_entries && (img->reftable[g] & QCOW2_REFT_OFFSET_MASK);
}

/*
 * Allocate nb clusters at the end of the image, followed by the refcount
 * blocks that the area [first, first + nb + k) needs for itself. The new
 * blocks are written in full (with their refcounts) before the refcount table
 * in memory points at them (invariant 4); the table reaches the file at the
 * next metadata flush, after the blocks.
 */
static int alloc_area(qcow2_image *img, uint64_t nb, const char *what, uint64_t *first_out)
{
    uint64_t pb = per_block(img);
    uint8_t *blk = NULL;
    int rc = qcow2__refcount_table(img);

    if (rc)
        return rc;
    for (;;) {
        uint64_t a = qcow2__max(img->alloc_end, 1), k = 0, g_last, next;

        for (;;) {
            uint64_t m = 0;
            g_last = (a + nb + k - 1) / pb;
            for (uint64_t g = a / pb; g <= g_last; g++)
                m += !group_has_block(img, g);
            if (m == k)
                break;
            k = m;
        }
        if ((a + nb + k) << img->cluster_bits > QCOW2_MAX_HOST_OFFSET)
            return qcow2__err(QCOW2_ENOSPC, 0, img->name, "image would grow past 64 PiB");
        if (g_last >= img->rt_entries) {
            rc = grow_reftable(img, g_last);
            if (rc)
                return rc;
            continue; /* the table moved to the end: place the area after it */
        }
        rc = alloc_check(img, what, a, nb + k);
        if (rc)
            return rc;
        /*
         * A group that gets its first block here but holds metadata below the
         * area has lost its refcounts (an emptied refcount table): counting
         * only the new clusters would make that loss permanent.
         */
        for (uint64_t g = a / pb; g <= g_last; g++) {
            if (!group_has_block(img, g) && g * pb < a) {
                rc = alloc_check(img, "a refcount block", g * pb, a - g * pb);
                if (rc)
                    return rc;
            }
        }
        /* Area clusters in groups that already have a block: through the cache. */
        for (uint64_t c = a; c < a + nb + k; c++) {
            if (group_has_block(img, c / pb)) {
                rc = qcow2__refcount_set(img, c, 1);
                if (rc)
                    return rc;
            }
        }
        if (k) {
            blk = qcow2__malloc((size_t)img->cluster_size);
            if (!blk)
                return qcow2__nomem();
        }
        next = a + nb;
        for (uint64_t g = a / pb; g <= g_last && !rc; g++) {
            uint64_t lo, hi, boff;
            if (group_has_block(img, g))
                continue;
            /* A fresh block holding 1 for each area cluster of its group. */
            memset(blk, 0, (size_t)img->cluster_size);
            lo = qcow2__max(a, g * pb);
            hi = qcow2__min(a + nb + k, (g + 1) * pb);
            for (uint64_t c = lo; c < hi; c++)
                block_put(img, blk, c % pb, 1);
            boff = (next++) << img->cluster_bits;
            qcow2__cache_drop(&img->rbc, boff);
            rc = qcow2__io_write(img->io, img->name, blk, (size_t)img->cluster_size, boff);
            if (rc)
                break;
            img->reftable[g] = boff;
            img->rt_dirty = true;
            img->meta_gen++;
        }
        qcow2__free(blk);
        if (rc)
            return rc;
        assert(next == a + nb + k);
        note_used(img, a + nb + k - 1);
        img->free_hint = a + nb + k;
        *first_out = a;
        return 0;
    }
}

static int alloc_clusters(qcow2_image *img, uint64_t nb, const char *what,
                          uint64_t *host_off_out)
{
    if (img->rt_broken)
        return qcow2__corrupt(img, "the refcount table is unusable; run 'qsnap image check -r all'");

    uint64_t pb = per_block(img);
    uint64_t start = img->free_hint, run = 0;
    int rc;

    assert(nb > 0);
    /* Reuse free clusters below the end first, where blocks already exist. */
    while (run < nb && start + run < img->alloc_end) {
        uint64_t idx = start + run, v;

        if (!group_has_block(img, idx / pb)) {
            start = (idx / pb + 1) * pb;
            run = 0;
            continue;
        }
        rc = qcow2__refcount_get(img, idx, &v);
        if (rc)
            return rc;
        if (v) {
            start = idx + 1;
            run = 0;
        } else {
            run++;
        }
    }
    if (run < nb) {
        rc = alloc_area(img, nb, what, &start);
        if (rc)
            return rc;
        *host_off_out = start << img->cluster_bits;
        return 0;
    }
    rc = alloc_check(img, what, start, nb);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < nb; i++) {
        rc = qcow2__refcount_set(img, start + i, 1);
        if (rc)
            return rc;
    }
    img->free_hint = start + nb;
    *host_off_out = start << img->cluster_bits;
    return 0;
}

int qcow2__alloc_clusters(qcow2_image *img, uint64_t nb, uint64_t *host_off_out)
{
    return alloc_clusters(img, nb, nb == 1 ? "a cluster" : "clusters", host_off_out);
}

int qcow2__alloc_bytes(qcow2_image *img, uint64_t len, uint64_t *host_off_out)
{
    uint64_t off = img->cbyte_off;
    int rc;

    assert(len > 0 && len < img->cluster_size);
    uint64_t cur = 0;

    if (off) {
        rc = qcow2__refcount_get(img, off >> img->cluster_bits, &cur);
        if (rc)
            return rc;
    }
    if (off && (off & (img->cluster_size - 1)) + len <= img->cluster_size &&
        cur < refcount_max(img)) {
        /* Share the partly used cluster: one more reference to it. */
        rc = qcow2__refcount_set(img, off >> img->cluster_bits, cur + 1);
        if (rc)
            return rc;
    } else {
        rc = alloc_clusters(img, 1, "compressed data", &off);
        if (rc)
            return rc;
    }
    *host_off_out = off;
    img->cbyte_off = off + len;
    if (!(img->cbyte_off & (img->cluster_size - 1)))
        img->cbyte_off = 0;
    return 0;
}

void qcow2__compressed_range(const qcow2_image *img, uint64_t l2e, uint64_t *host_off,
                             uint64_t *len)
{
    uint64_t coff = l2e & img->coff_mask;
    uint64_t nb_sectors = ((l2e >> img->csize_shift) & img->csize_mask) + 1;

    *host_off = coff & ~(uint64_t)(QCOW2_COMPRESSED_SECTOR - 1);
    *len = nb_sectors * QCOW2_COMPRESSED_SECTOR;
}

int qcow2__free_later(qcow2_image *img, uint64_t host_off, uint64_t len)
{
    if (img->nb_pending == img->pending_alloc) {
        size_t n = img->pending_alloc ? img->pending_alloc * 2 : 64;
        struct qcow2__pending_free *p = qcow2__realloc(img->pending, n * sizeof(*p));
        if (!p)
            return qcow2__nomem();
        img->pending = p;
        img->pending_alloc = n;
    }
    /* Merge with the previous range when adjacent (common for runs of clusters). */
    if (img->nb_pending) {
        struct qcow2__pending_free *prev = &img->pending[img->nb_pending - 1];
        if (prev->host_off + prev->len == host_off && !(host_off & (img->cluster_size - 1)) &&
            !(len & (img->cluster_size - 1))) {
            prev->len += len;
            return 0;
        }
    }
    img->pending[img->nb_pending].host_off = host_off;
    img->pending[img->nb_pending].len = len;
    img->nb_pending++;
    return 0;
}

static int cmp_pending(const void *a, const void *b)
{
    const struct qcow2__pending_free *x = a, *y = b;

    return x->host_off < y->host_off ? -1 : x->host_off > y->host_off;
}

int qcow2__apply_pending_frees(qcow2_image *img)
{
    struct qcow2__pending_free *list = img->pending;
    size_t n = img->nb_pending;
    uint64_t punch_off = 0, punch_len = 0;
    int rc = 0;

    /* Take the list: a nested flush (cache eviction) must not apply it twice. */
    img->pending = NULL;
    img->nb_pending = 0;
    img->pending_alloc = 0;
    /* In file order, so that freed neighbours give the space back in one call. */
    qsort(list, n, sizeof(*list), cmp_pending);
    for (size_t i = 0; i < n && !rc; i++) {
        uint64_t first = list[i].host_off >> img->cluster_bits;
        uint64_t last = (list[i].host_off + list[i].len - 1) >> img->cluster_bits;

        rc = qcow2__refcount_update(img, list[i].host_off, list[i].len, -1);
        for (uint64_t c = first; c <= last && !rc; c++) {
            uint64_t v, off = c << img->cluster_bits;
            rc = qcow2__refcount_get(img, c, &v);
            if (rc || v)
                continue;
            /* Freed for good: forget any table cached from it, give the space back. */
            qcow2__cache_drop(&img->l2c, off);
            qcow2__cache_drop(&img->rbc, off);
            if (off == (img->cbyte_off & ~(img->cluster_size - 1)))
                img->cbyte_off = 0;
            if (punch_len && punch_off + punch_len == off) {
                punch_len += img->cluster_size;
                continue;
            }
            if (punch_len)
                rc = qcow2__io_punch(img->io, img->name, punch_off, punch_len);
            punch_off = off;
            punch_len = img->cluster_size;
        }
    }
    if (!rc && punch_len)
        rc = qcow2__io_punch(img->io, img->name, punch_off, punch_len);
    /* On failure, whatever was not applied stays allocated: a leak, never a corruption. */
    qcow2__free(list);
    return rc;
}

/* [off, off+len) against [b, b+blen). */
static bool meets(uint64_t off, uint64_t len, uint64_t b, uint64_t blen)
{
    return qcow2__ranges_meet(off, off + len, b, b + blen);
}

const char *qcow2__meta_overlap(const qcow2_image *img, uint64_t off, uint64_t len, bool deep)
{
    uint64_t cs = img->cluster_size;

    if (meets(off, len, 0, cs))
        return "the header";
    if (meets(off, len, img->hdr.l1_off, (uint64_t)img->hdr.l1_size * 8))
        return "the L1 table";
    if (!img->rt_broken && meets(off, len, img->hdr.rt_off, (uint64_t)img->hdr.rt_clusters * cs))
        return "the refcount table";
    if (img->nb_snaps && meets(off, len, img->hdr.snap_off, qcow2__snap_table_len(img)))
        return "the snapshot table";
    if (!deep)
        return NULL;
    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        if (meets(off, len, img->snaps[i].l1_off, (uint64_t)img->snaps[i].l1_size * 8))
            return "a snapshot's L1 table";
    }
    /* Clear of the span of the blocks (alloc_overlap keeps it): no entry to look at. */
    if (img->rb_span_gen == img->meta_gen + 1 && img->rb_span_table == img->reftable &&
        !meets(off, len, img->rb_span_lo, img->rb_span_hi - img->rb_span_lo))
        return NULL;
    for (uint64_t i = 0; i < img->rt_entries; i++) {
        if (meets(off, len, img->reftable[i] & QCOW2_REFT_OFFSET_MASK, cs))
            return "a refcount block";
    }
    return NULL;
}

/* Every refcount block counted in a group that has a block (resize --shrink refuses otherwise). */
int qcow2__refcount_blocks_covered(qcow2_image *img)
{
    int rc = qcow2__refcount_table(img);

    for (uint64_t i = 0; !rc && i < img->rt_entries; i++) {
        uint64_t off, v = 0;

        rc = block_offset(img, i, &off);
        if (rc || !off)
            continue;
        if (group_has_block(img, (off >> img->cluster_bits) / per_block(img)))
            rc = qcow2__refcount_get(img, off >> img->cluster_bits, &v);
        if (!rc && v == 0)
            rc = qcow2__corrupt(img,
                                "refcount block at 0x%" PRIx64 " (table entry %" PRIu64
                                ") is not covered by the refcount structures; run "
                                "'qsnap image check -r all' first",
                                off, i);
    }
    return rc;
}
