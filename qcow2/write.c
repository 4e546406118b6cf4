/*
 * Writing guest data into the top qcow2 layer: allocation, copy-on-write
 * from the backing chain and from shared or compressed clusters, zero and
 * discard requests, compressed clusters and resize. Callers above are the
 * public API; below are cluster.c (mapping), refcount.c (allocation),
 * cache.c, share.c (data shared with another file) and flush.c (the ordered
 * metadata flush that makes all of it crash-safe).
 *
 * Crash safety (invariant 3 of qcow2_format.h): guest data is written to
 * clusters nothing points at yet; the new mapping lives in the metadata
 * cache until qcow2__metadata_flush() writes it out in dependency order
 * (flush.c), so every table on disk only ever points at complete,
 * refcounted clusters. A cluster a write stops using is freed only after
 * the new mapping is durable (qcow2__free_later), so a crash at any point
 * leaves at worst leaked clusters.
 */
#include <inttypes.h>

#include "qcow2_int.h"

#define WRITE_RUN_BYTES (2u << 20) /* most bytes allocated and written in one step */

static const uint8_t zero_buf[65536];

/*
 * Checks common to every mutating call, and the first-write header update:
 * unknown autoclear bits (and the bitmaps bit: bitmaps are not maintained)
 * are cleared, and with lazy refcounts the image is marked dirty, before any
 * other byte changes.
 */
static int start_write(qcow2_image *img, uint64_t off, uint64_t len)
{
    int rc = qcow2__check_writable(img);

    if (rc)
        return rc;
    /* Any write but the next shared one finds the shares put off done (it may rewrite or read them). */
    if (!img->share_src) {
        rc = qcow2__share_drain(img);
        if (rc)
            return rc;
    }
    if (!qcow2__in_range(off, len, img->size))
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "write of %" PRIu64 " bytes at 0x%" PRIx64
                          " is beyond the virtual size (%" PRIu64 " bytes)",
                          len, off, img->size);
    img->dbuf_host_off = UINT64_MAX;
    qcow2__raw_changed(img); /* a write can turn a hole into data */
    qcow2__mapping_changed(img);
    if (img->fmt != QCOW2_FORMAT_QCOW2 || img->write_started)
        return 0;
    if (img->bitmaps_ext) {
        rc = qcow2__drop_bitmaps(img);
        if (rc)
            return qcow2__fatal(img, rc);
    }
    if (img->hdr.autoclear || (img->hdr.compat & QCOW2_COMPAT_LAZY_REFCOUNTS)) {
        img->hdr.autoclear = 0;
        if (img->hdr.compat & QCOW2_COMPAT_LAZY_REFCOUNTS)
            img->hdr.incompat |= QCOW2_INCOMPAT_DIRTY;
        rc = qcow2__header_write(img);
        if (rc)
            return qcow2__fatal(img, rc);
    }
    img->write_started = true;
    return 0;
}

/* Guest content of [off, off+len) as img reads it now; zeroes past the virtual size. */
static int read_current(qcow2_image *img, uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t part = off < img->size ? qcow2__min(len, img->size - off) : 0;
    int rc = part ? qcow2_image_read(img, buf, (size_t)part, off) : 0;

    if (!rc && part < len)
        memset(buf + part, 0, (size_t)(len - part));
    return rc;
}

/* Queue the release of whatever host storage L2 entry e holds. */
static int free_entry(qcow2_image *img, uint64_t e)
{
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

    if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t off, len;
        qcow2__compressed_range(img, e, &off, &len);
        return qcow2__free_later(img, off, len);
    }
    /* A misaligned offset is not a cluster we can free: it is left leaked (qemu: "Cannot
     * free unaligned cluster", and it goes on); check reports it. */
    if (host & (img->cluster_size - 1))
        return 0;
    return host ? qcow2__free_later(img, host, img->cluster_size) : 0;
}

/*
 * The L2 table for l1_idx, ready to be modified: allocated when missing,
 * copied when shared with an internal snapshot (L1 COPIED clear).
 */
static int l2_for_write(qcow2_image *img, uint64_t l1_idx, struct qcow2__cslot **out)
{
    uint64_t l1e = img->l1[l1_idx];
    uint64_t old_off = l1e & QCOW2_L1E_OFFSET_MASK, new_off;
    struct qcow2__cslot *slot;
    uint8_t *copy = NULL;
    int rc;

    if (old_off) {
        rc = qcow2__check_l2_offset(img, l1_idx, old_off);
        if (rc)
            return rc;
        if (l1e & QCOW2_OFLAG_COPIED) {
            const char *what;
            rc = qcow2__cache_get(img, &img->l2c, old_off, true, out);
            if (rc || (*out)->checked)
                return rc;
            /* About to be changed in place: it must not be some other metadata. */
            what = qcow2__meta_overlap(img, old_off, img->cluster_size, true);
            if (what) /* marked corrupt, as qemu does */
                return qcow2__fatal(img, qcow2__corrupt(img,
                                                        "L2 table at 0x%" PRIx64
                                                        " (L1 entry %" PRIu64
                                                        ") overlaps %s; not writing",
                                                        old_off, l1_idx, what));
            (*out)->checked = true;
            return 0;
        }
        /*
         * Shared: the copy takes over the active L1's walk of the table, so the
         * clusters it maps keep their refcounts (qemu counts a data cluster once
         * per L1 entry that reaches its table). Each is still reached from the
         * old table too, so none is owned: COPIED is cleared in the copy.
         */
        rc = qcow2__cache_get(img, &img->l2c, old_off, true, &slot);
        if (rc)
            return rc;
        copy = qcow2__malloc((size_t)img->cluster_size);
        if (!copy)
            return qcow2__nomem();
        memcpy(copy, slot->data, (size_t)img->cluster_size);
        for (uint64_t i = 0; i < img->l2_entries; i++) {
            uint8_t *p = copy + i * img->l2e_bytes;
            uint64_t e = qcow2__be64(p);
            if (!(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_L2E_OFFSET_MASK))
                qcow2__put_be64(p, e & ~QCOW2_OFLAG_COPIED);
        }
    }
    rc = qcow2__alloc_clusters(img, 1, &new_off);
    if (rc)
        goto out;
    rc = qcow2__cache_get(img, &img->l2c, new_off, false, &slot);
    if (rc)
        goto out;
    if (copy)
        memcpy(slot->data, copy, (size_t)img->cluster_size);
    slot->dirty = true;
    img->l1[l1_idx] = new_off | QCOW2_OFLAG_COPIED;
    img->l1_dirty = true;
    qcow2__mapping_changed(img);
    if (old_off)
        rc = qcow2__free_later(img, old_off, img->cluster_size);
    *out = slot;
out:
    qcow2__free(copy);
    return rc;
}

static uint64_t l2_entry(const qcow2_image *img, const uint8_t *table, uint64_t idx)
{
    return qcow2__be64(table + idx * img->l2e_bytes);
}

static uint64_t l2_bitmap(const qcow2_image *img, const uint8_t *table, uint64_t idx)
{
    return img->extl2 ? qcow2__be64(table + idx * img->l2e_bytes + 8) : 0;
}

static void set_l2(qcow2_image *img, struct qcow2__cslot *slot, uint64_t idx, uint64_t e,
                   uint64_t bm)
{
    qcow2__mapping_changed(img);
    qcow2__put_be64(slot->data + idx * img->l2e_bytes, e);
    if (img->extl2)
        qcow2__put_be64(slot->data + idx * img->l2e_bytes + 8, bm);
    slot->dirty = true;
}

/* An owned, uncompressed, allocated cluster (refcount 1): written in place. */
static bool entry_owned(const qcow2_image *img, uint64_t e)
{
    if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_COPIED) || !(e & QCOW2_L2E_OFFSET_MASK))
        return false;
    return img->extl2 || !(e & QCOW2_OFLAG_ZERO);
}

static int check_host(qcow2_image *img, uint64_t host, uint64_t l2_off, uint64_t idx)
{
    const char *what;

    if ((host & (img->cluster_size - 1)) || host < img->cluster_size ||
        host > QCOW2_MAX_HOST_OFFSET)
        return qcow2__corrupt(img,
                              "cluster offset 0x%" PRIx64 " (L2 table 0x%" PRIx64 " entry %" PRIu64
                              ") is invalid",
                              host, l2_off, idx);
    /* Written in place: not over the fixed metadata (refcount blocks and L2
     * tables are not looked at here, on every write; qemu-img check finds them). */
    what = qcow2__meta_overlap(img, host, img->cluster_size, false);
    if (what)
        return qcow2__corrupt(img,
                              "data cluster 0x%" PRIx64 " (L2 table 0x%" PRIx64 " entry %" PRIu64
                              ") overlaps %s; not writing",
                              host, l2_off, idx, what);
    return 0;
}

/*
 * Entry idx of the L2 table at l2_off is about to be replaced and its host
 * cluster freed (a preallocated zero cluster, a shared one): that cluster
 * must be one a data cluster can be. Freeing metadata, or an unaligned
 * offset, would corrupt the refcounts; qemu refuses such a write too.
 */
static int check_replaced(qcow2_image *img, uint64_t e, uint64_t l2_off, uint64_t idx)
{
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    const char *what;

    if ((e & QCOW2_OFLAG_COMPRESSED) || !host)
        return 0;
    if ((host & (img->cluster_size - 1)) || host < img->cluster_size)
        return qcow2__corrupt(img,
                              "cluster offset 0x%" PRIx64 " (L2 table 0x%" PRIx64 " entry %" PRIu64
                              ") is unaligned or in the header; not writing",
                              host, l2_off, idx);
    what = qcow2__meta_overlap_all(img, host, img->cluster_size);
    if (what)
        return qcow2__corrupt(img,
                              "cluster 0x%" PRIx64 " (L2 table 0x%" PRIx64 " entry %" PRIu64
                              ") overlaps %s; not writing",
                              host, l2_off, idx, what);
    return 0;
}

/* Write [off, off+len) (within one cluster) of an extended-L2 image. */
static int write_extl2_cluster(qcow2_image *img, struct qcow2__cslot *slot, uint64_t idx,
                               const uint8_t *data, uint64_t off, uint64_t len)
{
    uint64_t cs = img->cluster_size, scs = 1ull << img->sc_bits;
    uint64_t cstart = off & ~(cs - 1);
    uint64_t e = l2_entry(img, slot->data, idx), bm = l2_bitmap(img, slot->data, idx);
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    uint64_t a = off - cstart, b = a + len;
    unsigned sa, sb;
    uint64_t span_off, span_len;
    uint32_t bits;
    uint8_t *buf = NULL;
    bool whole = false;
    int rc;

    if (entry_owned(img, e)) {
        rc = check_host(img, host, slot->off, idx);
        if (rc)
            return rc;
    } else if ((e & QCOW2_OFLAG_COMPRESSED) || host) {
        whole = true; /* shared or compressed: the new cluster takes all of it */
    }
    if (whole) {
        sa = 0;
        sb = QCOW2_SUBCLUSTERS - 1;
    } else {
        sa = (unsigned)(a >> img->sc_bits);
        sb = (unsigned)((b - 1) >> img->sc_bits);
    }
    span_off = (uint64_t)sa << img->sc_bits;
    span_len = ((uint64_t)sb + 1 - sa) << img->sc_bits;
    buf = qcow2__malloc((size_t)span_len);
    if (!buf)
        return qcow2__nomem();
    if (a > span_off) {
        rc = read_current(img, buf, a - span_off, cstart + span_off);
        if (rc)
            goto out;
    }
    memcpy(buf + (a - span_off), data, (size_t)len);
    if (span_off + span_len > b) {
        rc = read_current(img, buf + (b - span_off), span_off + span_len - b, cstart + b);
        if (rc)
            goto out;
    }
    if (!entry_owned(img, e)) {
        uint64_t new_host;
        rc = check_replaced(img, e, slot->off, idx);
        if (rc)
            goto out;
        rc = qcow2__alloc_clusters(img, 1, &new_host);
        if (rc)
            goto out;
        rc = qcow2__io_write(img->io, img->name, buf, (size_t)span_len, new_host + span_off);
        if (rc)
            goto out;
        rc = free_entry(img, e);
        if (rc)
            goto out;
        if (whole)
            bm = 0;
        e = new_host | QCOW2_OFLAG_COPIED;
    } else {
        rc = qcow2__io_write(img->io, img->name, buf, (size_t)span_len, host + span_off);
        if (rc)
            goto out;
        /* A subcluster past the file's end (never written before) makes the file longer. */
        img->file_size = qcow2__max(img->file_size, host + span_off + span_len);
    }
    bits = (uint32_t)((sb - sa == 31) ? 0xffffffffu : (((1u << (sb - sa + 1)) - 1) << sa));
    bm = (bm | bits) & ~((uint64_t)bits << 32);
    set_l2(img, slot, idx, e, bm);
    QCOW2_UNUSED(scs);
out:
    qcow2__free(buf);
    return rc;
}

/*
 * Put len bytes of guest data at host offset host of img's file: from p, or
 * in qcow2__write_shared() from the source file (qcow2__share_put).
 */
static int put_data(qcow2_image *img, const uint8_t *p, uint64_t len, uint64_t host, uint64_t guest)
{
    if (!img->share_src)
        return qcow2__io_write(img->io, img->name, p, (size_t)len, host);
    return qcow2__share_put(img, len, host, guest);
}

/* A preallocated zero cluster (standard L2 entry: ZERO with a host offset) that we own. */
static bool zero_alloc_owned(const qcow2_image *img, uint64_t e)
{
    return !img->extl2 && !(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_OFLAG_ZERO) &&
           (e & QCOW2_OFLAG_COPIED) && (e & QCOW2_L2E_OFFSET_MASK);
}

/*
 * Write [off, off+len) (within one cluster) into the preallocated zero
 * cluster of entry idx: the whole cluster is written (zeroes around the new
 * bytes) before the entry loses its zero flag. Its offset came from the
 * file: it must be aligned and clear of every metadata structure first.
 */
static int write_zero_alloc(qcow2_image *img, struct qcow2__cslot *slot, uint64_t idx, uint64_t e,
                            const uint8_t *data, uint64_t off, uint64_t len)
{
    uint64_t cs = img->cluster_size, host = e & QCOW2_L2E_OFFSET_MASK;
    uint8_t *buf;
    int rc = check_replaced(img, e, slot->off, idx);

    if (rc)
        return rc;
    if (host > QCOW2_MAX_HOST_OFFSET - cs)
        return qcow2__corrupt(img, "cluster offset 0x%" PRIx64 " is invalid", host);
    if (!data) {
        /* qcow2__write_shared(): whole clusters only, from img->share_src. */
        rc = put_data(img, NULL, cs, host, off & ~(cs - 1));
    } else {
        buf = qcow2__calloc(1, (size_t)cs);
        if (!buf)
            return qcow2__nomem();
        memcpy(buf + (off & (cs - 1)), data, (size_t)len);
        rc = qcow2__io_write(img->io, img->name, buf, (size_t)cs, host);
        qcow2__free(buf);
    }
    if (rc)
        return rc;
    img->file_size = qcow2__max(img->file_size, host + cs);
    set_l2(img, slot, idx, e & ~QCOW2_OFLAG_ZERO, 0);
    return 0;
}

/* Write [off, off+len) within one L2 table's coverage (data NULL: from img->share_src). */
static int write_in_table(qcow2_image *img, const uint8_t *data, uint64_t off, uint64_t len)
{
    uint64_t cs = img->cluster_size;
    uint64_t l1_idx = off >> (img->cluster_bits + img->l2_bits);
    uint64_t end = off + len, pos = off;
    uint64_t max_run = qcow2__max(WRITE_RUN_BYTES / cs, 1);
    struct qcow2__cslot *slot;
    uint8_t *buf = NULL;
    int rc;

    rc = l2_for_write(img, l1_idx, &slot);
    if (rc)
        return rc;
    while (pos < end) {
        uint64_t idx = (pos >> img->cluster_bits) & (img->l2_entries - 1);
        uint64_t cstart = pos & ~(cs - 1);
        uint64_t e = l2_entry(img, slot->data, idx);

        if (img->extl2) {
            uint64_t n = qcow2__min(end, cstart + cs) - pos;
            rc = write_extl2_cluster(img, slot, idx, data + (pos - off), pos, n);
            if (rc)
                goto out;
            pos += n;
            continue;
        }
        if (zero_alloc_owned(img, e)) {
            /* A preallocated zero cluster of ours: written in place, as qemu does. */
            rc = write_zero_alloc(img, slot, idx, e, data ? data + (pos - off) : NULL, pos,
                                  qcow2__min(end, cstart + cs) - pos);
            if (rc)
                goto out;
            pos = qcow2__min(end, cstart + cs);
            continue;
        }
        if (entry_owned(img, e)) {
            /* In place; merge neighbours that are contiguous on the host too. */
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK, expect = host, run_end;
            rc = check_host(img, host, slot->off, idx);
            if (rc)
                goto out;
            run_end = qcow2__min(end, cstart + cs);
            while (run_end < end) {
                uint64_t i2 = (run_end >> img->cluster_bits) & (img->l2_entries - 1);
                uint64_t e2 = l2_entry(img, slot->data, i2);
                if (!entry_owned(img, e2) || (e2 & QCOW2_L2E_OFFSET_MASK) != expect + cs)
                    break;
                expect += cs;
                run_end = qcow2__min(end, run_end + cs);
            }
            rc = put_data(img, data ? data + (pos - off) : NULL, run_end - pos,
                          host + (pos - cstart), pos);
            if (rc)
                goto out;
            img->file_size = qcow2__max(img->file_size, host + (pos - cstart) + (run_end - pos));
            pos = run_end;
            continue;
        }
        {
            /* A run of clusters that need new storage: allocate them together. */
            uint64_t k = 1, new_host, span, wend;
            const uint8_t *src = data ? data + (pos - off) : NULL;

            while (k < max_run && cstart + k * cs < end) {
                uint64_t e2 = l2_entry(img, slot->data, idx + k);
                if (entry_owned(img, e2))
                    break;
                k++;
            }
            for (uint64_t j = 0; j < k; j++) {
                rc = check_replaced(img, l2_entry(img, slot->data, idx + j), slot->off, idx + j);
                if (rc)
                    goto out;
            }
            span = k * cs;
            wend = qcow2__min(end, cstart + span);
            if (pos > cstart || wend < cstart + span) {
                /* Partial clusters: the old content around the new bytes, in a bounce buffer. */
                if (!src) { /* qcow2__write_shared() takes whole clusters only */
                    rc = qcow2__err(QCOW2_EINVAL, 0, img->name, "shared write of a partial cluster");
                    goto out;
                }
                buf = qcow2__malloc((size_t)span);
                if (!buf) {
                    rc = qcow2__nomem();
                    goto out;
                }
                if (pos > cstart) {
                    rc = read_current(img, buf, pos - cstart, cstart);
                    if (rc)
                        goto out;
                }
                memcpy(buf + (pos - cstart), src, (size_t)(wend - pos));
                if (wend < cstart + span) {
                    rc = read_current(img, buf + (wend - cstart), cstart + span - wend, wend);
                    if (rc)
                        goto out;
                }
                src = buf;
            }
            rc = qcow2__alloc_clusters(img, k, &new_host);
            if (rc)
                goto out;
            rc = put_data(img, src, span, new_host, cstart);
            if (rc)
                goto out;
            for (uint64_t j = 0; j < k; j++) {
                rc = free_entry(img, l2_entry(img, slot->data, idx + j));
                if (rc)
                    goto out;
                set_l2(img, slot, idx + j, (new_host + j * cs) | QCOW2_OFLAG_COPIED, 0);
            }
            qcow2__free(buf);
            buf = NULL;
            pos = wend;
        }
    }
out:
    qcow2__free(buf);
    return rc ? qcow2__fatal(img, rc) : 0;
}

/* Split [off, off+len) at L2 table boundaries and apply fn to each piece. */
static int for_each_table(qcow2_image *img, const uint8_t *data, uint64_t off, uint64_t len,
                          int (*fn)(qcow2_image *, const uint8_t *, uint64_t, uint64_t))
{
    uint64_t cover = 1ull << (img->cluster_bits + img->l2_bits);

    while (len) {
        uint64_t n = qcow2__min(len, cover - (off & (cover - 1)));
        int rc = fn(img, data, off, n);
        if (rc)
            return rc;
        if (data)
            data += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int write_data(qcow2_image *img, const void *buf, size_t len, uint64_t guest_off)
{
    int rc;

    if (!img || (!buf && len))
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "qcow2_image_write: missing argument");
    rc = start_write(img, guest_off, len);
    if (rc || !len)
        return rc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__io_write(img->io, img->name, buf, len, guest_off);
    return for_each_table(img, buf, guest_off, len, write_in_table);
}

/* Explicit zero data through the write path (v2, partial clusters, raw). */
static int write_zero_data(qcow2_image *img, uint64_t off, uint64_t len)
{
    while (len) {
        uint64_t n = qcow2__min(len, sizeof(zero_buf));
        int rc = img->fmt == QCOW2_FORMAT_QCOW2
                     ? for_each_table(img, zero_buf, off, n, write_in_table)
                     : qcow2__io_write(img->io, img->name, zero_buf, (size_t)n, off);
        if (rc)
            return rc;
        off += n;
        len -= n;
    }
    return 0;
}

/* Whether [off, off+len) of the chain reads as zeroes by its allocation status (not its bytes). */
static bool status_zero(qcow2_image *img, uint64_t off, uint64_t len)
{
    while (len) {
        qcow2_extent e;

        if (qcow2_image_block_status(img, NULL, off, len, &e) || !(e.flags & QCOW2_EXT_ZERO))
            return false;
        off += e.length;
        len -= qcow2__min(e.length, len);
    }
    return true;
}

/*
 * Whether a zero write of [a, b) may zero all of the (sub)cluster [us, ue)
 * with flags, as qemu does: this layer leaves it unallocated or zero, and
 * the rest of it already reads as zeroes. Otherwise the piece is written as
 * explicit zeroes (which allocates).
 */
static bool unit_zero_but(qcow2_image *img, uint64_t us, uint64_t ue, uint64_t a, uint64_t b)
{
    struct qcow2__lrun run;

    if (qcow2__layer_extent(img, us, ue - us, &run) || run.len < ue - us ||
        (run.kind != QCOW2__RUN_ZERO && run.kind != QCOW2__RUN_UNALLOC))
        return false;
    return status_zero(img, us, a - us) && status_zero(img, b, ue - b);
}

/* Zero [off, off+len) within one L2 table; unmap: free the clusters too. */
static int zero_in_table(qcow2_image *img, uint64_t off, uint64_t len, bool unmap)
{
    uint64_t cs = img->cluster_size, scs = 1ull << img->sc_bits;
    uint64_t end = off + len, pos = off;
    uint64_t l1_idx = off >> (img->cluster_bits + img->l2_bits);
    struct qcow2__cslot *slot = NULL;
    int rc = 0;

    while (pos < end) {
        uint64_t cstart = pos & ~(cs - 1);
        uint64_t cend = qcow2__min(cstart + cs, img->size);
        uint64_t stop = qcow2__min(end, cend);
        uint64_t unit = img->extl2 ? scs : cs;
        uint64_t hs = pos & ~(unit - 1), ts = (stop - 1) & ~(unit - 1);
        uint64_t ia, ib, idx, e, bm;

        /* Partial (sub)clusters that otherwise read as zeroes are zeroed whole. */
        if (hs < pos && unit_zero_but(img, hs, qcow2__min(hs + unit, cend), pos, stop))
            pos = hs;
        if (stop < qcow2__min(ts + unit, cend) &&
            unit_zero_but(img, ts, qcow2__min(ts + unit, cend), qcow2__max(pos, ts), stop))
            stop = qcow2__min(ts + unit, cend);
        /* Subcluster- (or cluster-) aligned inner part; the rest is explicit zeroes. */
        ia = qcow2__align_up(pos, unit);
        ib = stop == cend ? cend : stop & ~(unit - 1);

        if (ia >= ib) {
            rc = write_zero_data(img, pos, stop - pos);
            if (rc)
                return rc;
            pos = stop;
            continue;
        }
        if (ia > pos) {
            rc = write_zero_data(img, pos, ia - pos);
            if (rc)
                return rc;
        }
        rc = l2_for_write(img, l1_idx, &slot);
        if (rc)
            return qcow2__fatal(img, rc);
        idx = (cstart >> img->cluster_bits) & (img->l2_entries - 1);
        e = l2_entry(img, slot->data, idx);
        bm = l2_bitmap(img, slot->data, idx);
        if (!img->extl2) {
            /* Without unmap a host cluster stays allocated (zero flag added), as in qemu. */
            if (unmap || (e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_L2E_OFFSET_MASK)) {
                rc = free_entry(img, e);
                set_l2(img, slot, idx, QCOW2_OFLAG_ZERO, 0);
            } else {
                set_l2(img, slot, idx, e | QCOW2_OFLAG_ZERO, 0);
            }
        } else {
            unsigned sa = (unsigned)((ia - cstart) >> img->sc_bits);
            unsigned sb = (unsigned)(((ib - cstart) + scs - 1) >> img->sc_bits); /* exclusive */
            uint32_t bits = sb - sa == 32 ? 0xffffffffu : ((1u << (sb - sa)) - 1) << sa;
            bool all = sa == 0 && sb == 32;
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

            if (all && (unmap || (e & QCOW2_OFLAG_COMPRESSED) || !host)) {
                rc = free_entry(img, e);
                set_l2(img, slot, idx, 0, 0xffffffffull << 32);
            } else if (all) {
                set_l2(img, slot, idx, e, 0xffffffffull << 32);
            } else if (entry_owned(img, e) || (!host && !(e & QCOW2_OFLAG_COMPRESSED))) {
                set_l2(img, slot, idx, e, (bm & ~(uint64_t)bits) | ((uint64_t)bits << 32));
            } else {
                /* Part of a shared or compressed cluster: copy it, with zeroes. */
                rc = write_zero_data(img, ia, ib - ia);
            }
        }
        if (rc)
            return qcow2__fatal(img, rc);
        if (ib < stop) {
            rc = write_zero_data(img, ib, stop - ib);
            if (rc)
                return rc;
        }
        pos = stop;
    }
    return 0;
}

/* for_each_table callbacks (one per flag: no state outside the image, for threads). */
static int zero_keep_in_table(qcow2_image *img, const uint8_t *unused, uint64_t off, uint64_t len)
{
    QCOW2_UNUSED(unused);
    return zero_in_table(img, off, len, false);
}

static int zero_unmap_in_table(qcow2_image *img, const uint8_t *unused, uint64_t off, uint64_t len)
{
    QCOW2_UNUSED(unused);
    return zero_in_table(img, off, len, true);
}

static int write_zeroes(qcow2_image *img, uint64_t guest_off, uint64_t len, unsigned flags)
{
    int rc = start_write(img, guest_off, len);

    if (rc || !len)
        return rc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__io_punch(img->io, img->name, guest_off, len); /* a hole reads as zeroes */
    if (img->hdr.version < 3)
        return write_zero_data(img, guest_off, len);
    return for_each_table(img, NULL, guest_off, len,
                          (flags & QCOW2_ZERO_MAY_UNMAP) ? zero_unmap_in_table : zero_keep_in_table);
}

static int discard_in_table(qcow2_image *img, const uint8_t *unused, uint64_t off, uint64_t len)
{
    uint64_t cs = img->cluster_size;
    uint64_t l1_idx = off >> (img->cluster_bits + img->l2_bits);
    struct qcow2__cslot *slot = NULL;
    int rc;

    QCOW2_UNUSED(unused);
    for (uint64_t pos = off; pos < off + len; pos += cs) {
        uint64_t idx = (pos >> img->cluster_bits) & (img->l2_entries - 1);
        uint64_t l1e = img->l1[l1_idx], e = 0, bm = 0, ne, nbm;
        bool allocated;

        if (l1e & QCOW2_L1E_OFFSET_MASK) {
            const uint8_t *t;
            rc = qcow2__check_l2_offset(img, l1_idx, l1e & QCOW2_L1E_OFFSET_MASK);
            if (!rc)
                rc = qcow2__l2_load(img, l1e & QCOW2_L1E_OFFSET_MASK, &t);
            if (rc)
                return qcow2__fatal(img, rc);
            e = l2_entry(img, t, idx);
            bm = l2_bitmap(img, t, idx);
        }
        allocated = (e & QCOW2_OFLAG_COMPRESSED) || (e & QCOW2_L2E_OFFSET_MASK);
        if (img->hdr.version >= 3 && (img->backing || allocated)) {
            /* Reads as zero afterwards, whatever the backing file holds. */
            ne = img->extl2 ? 0 : (uint64_t)QCOW2_OFLAG_ZERO;
            nbm = img->extl2 ? (uint64_t)0xffffffffu << 32 : 0;
        } else {
            ne = 0;
            nbm = 0;
        }
        if (ne == e && nbm == bm)
            continue;
        rc = l2_for_write(img, l1_idx, &slot);
        if (!rc)
            rc = free_entry(img, l2_entry(img, slot->data, idx));
        if (rc)
            return qcow2__fatal(img, rc);
        set_l2(img, slot, idx, ne, nbm);
    }
    return 0;
}

static int discard(qcow2_image *img, uint64_t guest_off, uint64_t len)
{
    uint64_t cs, start, end;
    int rc = start_write(img, guest_off, len);

    if (rc || !len)
        return rc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__io_punch(img->io, img->name, guest_off, len);
    /* A v2 image cannot hide its backing file's data: qemu refuses, we leave it. */
    if (img->hdr.version < 3 && img->backing)
        return 0;
    cs = img->cluster_size;
    start = qcow2__align_up(guest_off, cs);
    end = guest_off + len == img->size ? qcow2__align_up(img->size, cs) : (guest_off + len) & ~(cs - 1);
    end = qcow2__min(end, qcow2__align_up(img->size, cs));
    if (start >= end)
        return 0;
    /* The last cluster may extend past the virtual size; for_each_table stops at len. */
    {
        uint64_t cover = 1ull << (img->cluster_bits + img->l2_bits);
        for (uint64_t off = start; off < end;) {
            uint64_t n = qcow2__min(end - off, cover - (off & (cover - 1)));
            rc = discard_in_table(img, NULL, off, n);
            if (rc)
                return rc;
            off += n;
        }
    }
    return 0;
}

static int write_compressed(qcow2_image *img, const void *buf, size_t len, uint64_t guest_off)
{
    uint64_t cs;
    uint8_t *in = NULL, *out = NULL;
    const uint8_t *data = buf;
    int rc = start_write(img, guest_off, len);

    if (rc || !len)
        return rc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name, "raw images cannot hold compressed data");
    cs = img->cluster_size;
    if ((guest_off & (cs - 1)) || ((len & (cs - 1)) && guest_off + len != img->size))
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "compressed writes must cover whole clusters (offset 0x%" PRIx64
                          ", %zu bytes)",
                          guest_off, len);
    in = qcow2__calloc(1, (size_t)cs);
    out = qcow2__malloc((size_t)cs);
    if (!in || !out) {
        rc = qcow2__nomem();
        goto out;
    }
    for (uint64_t done = 0; done < len; done += cs) {
        uint64_t off = guest_off + done, n = qcow2__min(cs, len - done);
        uint64_t l1_idx = off >> (img->cluster_bits + img->l2_bits);
        uint64_t idx = (off >> img->cluster_bits) & (img->l2_entries - 1);
        struct qcow2__cslot *slot;
        uint64_t coff, nb_sectors;
        long clen;

        memcpy(in, data + done, (size_t)n);
        if (n < cs)
            memset(in + n, 0, (size_t)(cs - n));
        clen = qcow2__compress(img->hdr.compression_type, out, (size_t)cs - 1, in, (size_t)cs);
        if (clen < 0) {
            rc = qcow2__err((int)clen, 0, img->name, "compression failed");
            goto out;
        }
        if (clen == 0) {
            /* Does not shrink: store it plainly, as qemu does. */
            rc = for_each_table(img, data + done, off, n, write_in_table);
            if (rc)
                goto out;
            continue;
        }
        rc = qcow2__alloc_bytes(img, (uint64_t)clen, &coff);
        if (!rc)
            rc = qcow2__io_write(img->io, img->name, out, (size_t)clen, coff);
        if (!rc)
            rc = l2_for_write(img, l1_idx, &slot);
        if (!rc)
            rc = free_entry(img, l2_entry(img, slot->data, idx));
        if (rc) {
            rc = qcow2__fatal(img, rc);
            goto out;
        }
        nb_sectors = ((coff + (uint64_t)clen - 1) >> 9) - (coff >> 9) + 1;
        set_l2(img, slot, idx,
               coff | ((nb_sectors - 1) << img->csize_shift) | QCOW2_OFLAG_COMPRESSED, 0);
    }
out:
    qcow2__free(in);
    qcow2__free(out);
    return rc;
}

/* Move the L1 table to new clusters with room for need entries. */
/*
 * Guest writes to the top of a chain keep its chain map (read.c) right:
 * the map's generation is left alone while the write runs, and the range
 * written is then marked as the top's (data) or to be walked (zeroes and
 * discards, which may leave it to the layers below). Any other writer, and
 * a write that fails, make every map of the chain stale.
 */
static bool quiet_begin(qcow2_image *img)
{
    if (img->depth != 0 || !img->cmap)
        return false;
    img->cmap_quiet = true;
    return true;
}

static int quiet_end(qcow2_image *img, bool quiet, int rc, uint64_t off, uint64_t len, bool held)
{
    if (!quiet)
        return rc;
    img->cmap_quiet = false;
    if (rc)
        qcow2__pool_bump(img->pool);
    else
        qcow2__cmap_wrote(img, off, len, held);
    return rc;
}

int qcow2_image_write(qcow2_image *img, const void *buf, size_t len, uint64_t guest_off)
{
    bool quiet;

    if (!img || (!buf && len))
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "qcow2_image_write: missing argument");
    quiet = quiet_begin(img);
    return quiet_end(img, quiet, write_data(img, buf, len, guest_off), guest_off, len, true);
}

int qcow2__write_shared(qcow2_image *img, uint64_t guest_off, uint64_t len, qcow2_io *src,
                        const char *src_name, uint64_t src_off)
{
    uint64_t cs = img->cluster_size;
    bool quiet;
    int rc;

    if (img->fmt != QCOW2_FORMAT_QCOW2 || img->extl2 || cs < QCOW2__CLONE_ALIGN || !len ||
        ((guest_off | len) & (cs - 1)) || (src_off & (QCOW2__CLONE_ALIGN - 1)) ||
        img->io->ops->version < 2 || !img->io->ops->clone_from || src->ops != img->io->ops)
        return 0;
    quiet = quiet_begin(img);
    img->share_src = src; /* set first: start_write() leaves the pending share alone */
    img->share_name = src_name;
    img->share_delta = src_off - guest_off;
    rc = start_write(img, guest_off, len);
    if (!rc)
        rc = for_each_table(img, NULL, guest_off, len, write_in_table);
    img->share_src = NULL;
    rc = quiet_end(img, quiet, rc, guest_off, len, true);
    return rc ? rc : 1;
}

int qcow2_image_write_zeroes(qcow2_image *img, uint64_t guest_off, uint64_t len, unsigned flags)
{
    bool quiet;

    if (!img)
        return write_zeroes(img, guest_off, len, flags);
    quiet = quiet_begin(img);
    return quiet_end(img, quiet, write_zeroes(img, guest_off, len, flags), guest_off, len, false);
}

int qcow2_image_discard(qcow2_image *img, uint64_t guest_off, uint64_t len)
{
    bool quiet;

    if (!img)
        return discard(img, guest_off, len);
    quiet = quiet_begin(img);
    return quiet_end(img, quiet, discard(img, guest_off, len), guest_off, len, false);
}

int qcow2_image_write_compressed(qcow2_image *img, const void *buf, size_t len, uint64_t guest_off)
{
    bool quiet;

    if (!img)
        return write_compressed(img, buf, len, guest_off);
    quiet = quiet_begin(img);
    return quiet_end(img, quiet, write_compressed(img, buf, len, guest_off), guest_off, len, true);
}

static int grow_l1(qcow2_image *img, uint64_t need)
{
    uint64_t cs = img->cluster_size;
    uint64_t entries = qcow2__align_up(need, cs / 8);
    uint64_t bytes = entries * 8, old_off = img->hdr.l1_off;
    uint64_t old_bytes = qcow2__align_up((uint64_t)img->hdr.l1_size * 8, cs);
    uint64_t *l1, new_off;
    uint8_t *raw;
    int rc;

    if (bytes > QCOW2_MAX_L1_BYTES)
        return qcow2__err(QCOW2_EINVAL, 0, img->name, "the L1 table would exceed %llu bytes",
                          QCOW2_MAX_L1_BYTES);
    /* The new table copies entries that must already be durable where they point. */
    rc = qcow2__metadata_flush(img);
    if (rc)
        return rc;
    l1 = qcow2__calloc((size_t)entries, sizeof(uint64_t));
    raw = qcow2__calloc(1, (size_t)bytes);
    if (!l1 || !raw) {
        qcow2__free(l1);
        qcow2__free(raw);
        return qcow2__nomem();
    }
    memcpy(l1, img->l1, (size_t)img->hdr.l1_size * 8);
    for (uint64_t i = 0; i < entries; i++)
        qcow2__put_be64(raw + i * 8, l1[i]);
    rc = qcow2__alloc_clusters(img, bytes / cs, &new_off);
    if (!rc)
        rc = qcow2__metadata_flush(img); /* its refcounts */
    if (!rc)
        rc = qcow2__io_write(img->io, img->name, raw, (size_t)bytes, new_off);
    if (!rc)
        rc = qcow2__sync(img);
    qcow2__free(raw);
    if (rc) {
        qcow2__free(l1);
        return qcow2__fatal(img, rc);
    }
    qcow2__free(img->l1);
    img->l1 = l1;
    img->l1_alloc = entries;
    qcow2__mapping_changed(img);
    img->hdr.l1_size = (uint32_t)entries;
    img->hdr.l1_off = new_off;
    img->header_dirty = true;
    if (old_bytes)
        rc = qcow2__free_later(img, old_off, old_bytes);
    return rc;
}

/* Whether any cluster of this layer at or past guest_off is allocated (or zero-flagged). */
static int tail_allocated(qcow2_image *img, uint64_t guest_off, bool *out)
{
    uint64_t cover = 1ull << (img->cluster_bits + img->l2_bits);
    uint64_t first = qcow2__align_up(guest_off, img->cluster_size);

    *out = false;
    for (uint64_t l1_idx = first / cover; l1_idx < img->hdr.l1_size; l1_idx++) {
        uint64_t l2_off = img->l1[l1_idx] & QCOW2_L1E_OFFSET_MASK;
        uint64_t from = l1_idx == first / cover ? (first & (cover - 1)) >> img->cluster_bits : 0;
        const uint8_t *t;
        int rc;

        if (!l2_off)
            continue;
        rc = qcow2__check_l2_offset(img, l1_idx, l2_off);
        if (!rc)
            rc = qcow2__l2_load(img, l2_off, &t);
        if (rc)
            return rc;
        for (uint64_t i = from; i < img->l2_entries; i++) {
            if (l2_entry(img, t, i) || l2_bitmap(img, t, i)) {
                *out = true;
                return 0;
            }
        }
    }
    return 0;
}

/*
 * Make [from, the end of from's cluster) read as zeroes where this layer holds
 * data or compressed data there. The bytes past a virtual size stay in the last
 * cluster; a shrink zeroes them so that no later grow (ours or another tool's)
 * shows the cut-off bytes again, and a grow zeroes them for images shrunk by
 * tools that left them.
 */
static int zero_cluster_tail(qcow2_image *img, uint64_t from)
{
    uint64_t end = qcow2__min(qcow2__align_up(from, img->cluster_size), img->size);
    struct qcow2__lrun run;
    int rc;

    if (from >= end)
        return 0;
    rc = qcow2__layer_extent(img, from, end - from, &run);
    if (rc)
        return rc;
    if (run.len >= end - from && (run.kind == QCOW2__RUN_ZERO || run.kind == QCOW2__RUN_UNALLOC))
        return 0;
    return write_zeroes(img, from, end - from, 0);
}

int qcow2_image_resize(qcow2_image *img, uint64_t new_size, bool allow_shrink)
{
    uint64_t per_l1, need, old_size;
    int rc = start_write(img, 0, 0);

    if (rc)
        return rc;
    if (new_size > QCOW2_MAX_VIRTUAL_SIZE)
        return qcow2__err(QCOW2_EINVAL, 0, img->name, "size %" PRIu64 " is too large", new_size);
    if (img->fmt != QCOW2_FORMAT_QCOW2) {
        rc = qcow2__io_truncate(img->io, img->name, new_size);
        if (!rc)
            img->size = img->file_size = new_size;
        return rc;
    }
    if (new_size < img->size) {
        bool used;
        if (img->nb_snaps)
            return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                              "cannot shrink an image that has internal snapshots");
        rc = tail_allocated(img, new_size, &used);
        if (!rc)
            rc = qcow2__refcount_blocks_covered(img);
        if (rc)
            return rc;
        if (used && !allow_shrink)
            return qcow2__err(QCOW2_EINVAL, 0, img->name,
                              "cannot shrink to %" PRIu64 " bytes: data is allocated past it",
                              new_size);
        if (used) {
            rc = qcow2_image_discard(img, new_size, img->size - new_size);
            if (rc)
                return rc;
            /* Discard leaves zero flags; drop them too so nothing maps past the end. */
        }
        rc = zero_cluster_tail(img, new_size);
        if (rc)
            return rc;
    }
    per_l1 = 1ull << (img->cluster_bits + img->l2_bits);
    need = new_size / per_l1 + (new_size % per_l1 != 0);
    if (need > img->hdr.l1_size) {
        rc = grow_l1(img, need);
        if (rc)
            return rc;
    }
    old_size = img->size;
    img->size = new_size;
    img->hdr.size = new_size;
    img->header_dirty = true;
    if (new_size > old_size) {
        /* The grown range reads as zeroes: not what the old last cluster held past
         * the old size, nor what a longer backing file holds there (as qemu). */
        rc = zero_cluster_tail(img, old_size);
        if (!rc && img->backing && img->backing->size > old_size)
            rc = write_zeroes(img, old_size, qcow2__min(new_size, img->backing->size) - old_size, 0);
        if (rc)
            return rc;
    }
    return qcow2__metadata_flush(img);
}

uint32_t qcow2_image_cluster_size(const qcow2_image *img)
{
    return img->fmt == QCOW2_FORMAT_QCOW2 ? (uint32_t)img->cluster_size : 512;
}

int qcow2__preallocate(qcow2_image *img, qcow2_prealloc mode)
{
    uint64_t cs = img->cluster_size;
    uint64_t cover = 1ull << (img->cluster_bits + img->l2_bits);
    uint64_t max_run = qcow2__max(WRITE_RUN_BYTES / cs, 1);
    uint64_t file_end;
    int rc = start_write(img, 0, 0);

    if (rc)
        return rc;
    for (uint64_t off = 0; off < img->size; off += cover) {
        uint64_t l1_idx = off / cover;
        uint64_t n = (qcow2__min(cover, img->size - off) + cs - 1) / cs;
        struct qcow2__cslot *slot;

        for (uint64_t i = 0; i < n;) {
            uint64_t k = qcow2__min(n - i, max_run), host;

            rc = qcow2__alloc_clusters(img, k, &host);
            if (!rc && mode == QCOW2_PREALLOC_FALLOC)
                rc = qcow2__io_allocate(img->io, img->name, host, k * cs);
            else if (!rc && mode == QCOW2_PREALLOC_FULL)
                rc = qcow2__io_write_zeroes(img->io, img->name, host, k * cs);
            /* Fetch the table after allocating: allocation may use the cache. */
            if (!rc)
                rc = l2_for_write(img, l1_idx, &slot);
            if (rc)
                return qcow2__fatal(img, rc);
            for (uint64_t j = 0; j < k; j++) {
                /* Extended L2: allocated but reading through (zeroes or backing). */
                set_l2(img, slot, i + j, (host + j * cs) | QCOW2_OFLAG_COPIED, 0);
            }
            i += k;
        }
    }
    rc = qcow2__metadata_flush(img);
    if (rc)
        return rc;
    rc = qcow2__io_size(img->io, img->name, &file_end);
    if (!rc && file_end < (img->alloc_end << img->cluster_bits))
        rc = qcow2__io_truncate(img->io, img->name, img->alloc_end << img->cluster_bits);
    return rc ? qcow2__fatal(img, rc) : 0;
}

/* For vmstate.c: see qcow2_int.h. */
int qcow2__write_begin(qcow2_image *img)
{
    return start_write(img, 0, 0);
}

int qcow2__write_clusters(qcow2_image *img, const void *buf, uint64_t len, uint64_t guest_off)
{
    assert(!((guest_off | len) & (img->cluster_size - 1)));
    return for_each_table(img, buf, guest_off, len, write_in_table);
}

int qcow2__grow_l1(qcow2_image *img, uint64_t need)
{
    return grow_l1(img, need);
}
