/*
 * Cluster mapping within one qcow2 layer: the L2 table cache and the
 * classification of guest ranges into runs (data, zero, unallocated,
 * compressed), validating every L1 and L2 entry on the way. read.c builds
 * chain reads and block status on top of qcow2__layer_extent(); the writer
 * will use the same cache.
 */
#include <inttypes.h>

#include "qcow2_int.h"

int qcow2__l2_cache_make(qcow2_image *img, bool ro, struct qcow2__cache *l2,
                         struct qcow2__cache *rb)
{
    uint64_t budget = img->opts.cache_bytes ? img->opts.cache_bytes : QCOW2_DEFAULT_CACHE_BYTES;
    /* Read-only, the image has at most one L2 table per L1 entry (of the active L1 or
     * a snapshot's) and one refcount block per refcount table entry; a writer's tables
     * can grow (a resize, a longer file), so its cache is sized by the budget alone. */
    uint64_t l2_most = img->hdr.l1_size;
    uint64_t rb_most = (uint64_t)img->hdr.rt_clusters * img->cluster_size / 8;
    int rc;

    for (uint32_t i = 0; i < img->nb_snaps; i++)
        l2_most = qcow2__max(l2_most, img->snaps[i].l1_size);
    rc = qcow2__cache_init(img, l2, budget, ro ? l2_most : UINT64_MAX, "L2 table");
    if (rc)
        return rc;
    /* Refcount blocks: a quarter of the budget is plenty (one covers many L2 tables). */
    rc = qcow2__cache_init(img, rb, budget / 4, ro ? rb_most : UINT64_MAX, "refcount block");
    if (rc)
        qcow2__cache_free(l2);
    return rc;
}

int qcow2__l2_cache_init(qcow2_image *img)
{
    return qcow2__l2_cache_make(img, img->state == QCOW2__OPEN_RO, &img->l2c, &img->rbc);
}

void qcow2__l2_cache_free(qcow2_image *img)
{
    qcow2__cache_free(&img->l2c);
    qcow2__cache_free(&img->rbc);
}

int qcow2__l2_load(qcow2_image *img, uint64_t l2_off, const uint8_t **table_out)
{
    struct qcow2__cslot *slot;
    int rc = qcow2__cache_get(img, &img->l2c, l2_off, true, &slot);

    if (rc)
        return rc;
    *table_out = slot->data;
    return 0;
}

int qcow2__check_l2_offset(qcow2_image *img, uint64_t l1_idx, uint64_t l2_off)
{
    if (l2_off & (img->cluster_size - 1))
        return qcow2__corrupt(img,
                              "L2 table offset 0x%" PRIx64 " in L1 entry %" PRIu64
                              " is not aligned to a cluster",
                              l2_off, l1_idx);
    if (l2_off < img->cluster_size)
        return qcow2__corrupt(img, "L2 table offset 0x%" PRIx64 " in L1 entry %" PRIu64
                                   " overlaps the header",
                              l2_off, l1_idx);
    if (!qcow2__in_range(l2_off, img->cluster_size, img->file_size))
        return qcow2__corrupt(img,
                              "L2 table at 0x%" PRIx64 " (L1 entry %" PRIu64
                              ") lies beyond the end of the file",
                              l2_off, l1_idx);
    return 0;
}

/*
 * Data must start inside the file. It may end past the end of the file: with
 * subclusters qemu extends the file only as far as it has written, and reads
 * there return zeroes.
 */
static int check_data_in_file(qcow2_image *img, uint64_t host, uint64_t l2_off, uint64_t l2_idx)
{
    /* Wholly past the end: qemu reads zeroes there (and its check reports it); so do we. */
    QCOW2_UNUSED(img);
    QCOW2_UNUSED(host);
    QCOW2_UNUSED(l2_off);
    QCOW2_UNUSED(l2_idx);
    return 0;
}

/* One cluster's or subcluster's classification. */
struct unit {
    enum qcow2__run kind;
    uint64_t host_off; /* DATA: host offset of this unit; COMPRESSED: the L2 entry */
    bool has_off;      /* an allocated host cluster backs this unit */
};

/*
 * Classify guest unit (cluster, or subcluster with extended L2) number sc
 * within the cluster described by entry e (+ bitmap bm).
 */
static int classify(qcow2_image *img, uint64_t e, uint64_t bm, unsigned sc, uint64_t l2_off,
                    uint64_t l2_idx, struct unit *u)
{
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

    if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff = e & img->coff_mask;
        if (coff > QCOW2_MAX_HOST_OFFSET || coff >= img->file_size)
            return qcow2__corrupt(img,
                                  "compressed cluster at 0x%" PRIx64 " (L2 table 0x%" PRIx64
                                  " entry %" PRIu64 ") lies beyond the end of the file",
                                  coff, l2_off, l2_idx);
        u->kind = QCOW2__RUN_COMPRESSED;
        u->host_off = e;
        u->has_off = false;
        return 0;
    }
    if (host && (host & (img->cluster_size - 1)))
        return qcow2__corrupt(img,
                              "cluster offset 0x%" PRIx64 " (L2 table 0x%" PRIx64
                              " entry %" PRIu64 ") is not aligned to a cluster",
                              host, l2_off, l2_idx);
    if (host && (host < img->cluster_size || host > QCOW2_MAX_HOST_OFFSET))
        return qcow2__corrupt(img,
                              "cluster offset 0x%" PRIx64 " (L2 table 0x%" PRIx64
                              " entry %" PRIu64 ") overlaps the header",
                              host, l2_off, l2_idx);
    u->has_off = host != 0;
    if (img->extl2) {
        uint32_t alloc = (uint32_t)bm, zero = (uint32_t)(bm >> 32);
        if (alloc & zero)
            return qcow2__corrupt(img,
                                  "extended L2 entry %" PRIu64 " of table 0x%" PRIx64
                                  " marks subclusters both allocated and zero (bitmap 0x%016" PRIx64
                                  ")",
                                  l2_idx, l2_off, bm);
        if (!host && alloc)
            return qcow2__corrupt(img,
                                  "extended L2 entry %" PRIu64 " of table 0x%" PRIx64
                                  " marks subclusters allocated in an unallocated cluster",
                                  l2_idx, l2_off);
        if (alloc & (1u << sc)) {
            u->kind = QCOW2__RUN_DATA;
            u->host_off = host + ((uint64_t)sc << img->sc_bits);
            return check_data_in_file(img, u->host_off, l2_off, l2_idx);
        } else if (zero & (1u << sc)) {
            u->kind = QCOW2__RUN_ZERO;
            u->host_off = host + ((uint64_t)sc << img->sc_bits);
        } else {
            u->kind = QCOW2__RUN_UNALLOC;
            u->host_off = host + ((uint64_t)sc << img->sc_bits);
        }
        return 0;
    }
    if (e & QCOW2_OFLAG_ZERO) {
        if (img->hdr.version < 3)
            return qcow2__corrupt(img,
                                  "zero cluster in a version 2 image (L2 table 0x%" PRIx64
                                  " entry %" PRIu64 ")",
                                  l2_off, l2_idx);
        u->kind = QCOW2__RUN_ZERO;
        u->host_off = host;
        return 0;
    }
    u->kind = host ? QCOW2__RUN_DATA : QCOW2__RUN_UNALLOC;
    u->host_off = host;
    return host ? check_data_in_file(img, host, l2_off, l2_idx) : 0;
}

int qcow2__layer_extent(qcow2_image *img, uint64_t guest_off, uint64_t len, struct qcow2__lrun *out)
{
    uint64_t unit_size = 1ull << img->sc_bits;
    uint64_t l2_cover = 1ull << (img->cluster_bits + img->l2_bits);
    uint64_t l1_idx = guest_off >> (img->cluster_bits + img->l2_bits);
    uint64_t l2_idx = (guest_off >> img->cluster_bits) & (img->l2_entries - 1);
    uint64_t limit, pos, l1e, l2_off;
    const uint8_t *table;
    struct unit first, u;
    unsigned sc;
    int rc;

    uint64_t reach = qcow2__max(img->size, img->vm_end); /* past the size: vm state */

    assert(len > 0 && guest_off < reach);
    /*
     * Deep chains ask each layer about the same long gaps again and again:
     * a run found unallocated (scanned to the end of its L2 table) is kept
     * and answers the next question inside it at once.
     */
    if (guest_off >= img->hole_start && guest_off < img->hole_end) {
        out->kind = QCOW2__RUN_UNALLOC;
        out->len = qcow2__min(len, img->hole_end - guest_off);
        out->host_off = 0;
        out->has_off = false;
        return 0;
    }
    /* A run never crosses an L2 table's coverage or the virtual size. */
    limit = qcow2__min(l2_cover - (guest_off & (l2_cover - 1)), reach - guest_off);

    l1e = l1_idx < img->hdr.l1_size ? img->l1[l1_idx] : 0;
    l2_off = l1e & QCOW2_L1E_OFFSET_MASK;
    if (!l2_off) {
        out->kind = QCOW2__RUN_UNALLOC;
        out->len = qcow2__min(len, limit);
        out->host_off = 0;
        out->has_off = false;
        img->hole_start = guest_off;
        img->hole_end = guest_off + limit;
        return 0;
    }
    /*
     * An L2 table that runs past the end of the file reads as zeroes there,
     * as qemu reads it (the I/O layer zero-fills past the end); writes still
     * refuse it (write.c checks the offset itself).
     */
    if (!(l2_off & (img->cluster_size - 1)) && l2_off >= img->cluster_size &&
        l2_off <= QCOW2_MAX_HOST_OFFSET && !qcow2__in_range(l2_off, img->cluster_size, img->file_size))
        rc = 0;
    else
        rc = qcow2__check_l2_offset(img, l1_idx, l2_off);
    if (rc)
        return rc;
    rc = qcow2__l2_load(img, l2_off, &table);
    if (rc)
        return rc;

    /* Walk units (subclusters or clusters) while the kind stays the same. */
    pos = guest_off;
    sc = (unsigned)((guest_off >> img->sc_bits) & (img->extl2 ? 31 : 0));
    {
        const uint8_t *p = table + l2_idx * img->l2e_bytes;
        uint64_t e = qcow2__be64(p), bm = img->extl2 ? qcow2__be64(p + 8) : 0;
        rc = classify(img, e, bm, sc, l2_off, l2_idx, &first);
        if (rc)
            return rc;
    }
    out->kind = first.kind;
    out->has_off = first.has_off;
    if (first.kind == QCOW2__RUN_DATA)
        out->host_off = first.host_off + (guest_off & (unit_size - 1));
    else
        out->host_off = first.host_off;
    if (first.kind == QCOW2__RUN_COMPRESSED) {
        /* One compressed cluster at a time: neighbours are not contiguous. */
        out->len = qcow2__min(len, img->cluster_size - (guest_off & (img->cluster_size - 1)));
        out->len = qcow2__min(out->len, limit);
        return 0;
    }
    {
        uint64_t expect_host = first.host_off;
        /* An unallocated run is scanned to the table's end, to be remembered. */
        bool hole = first.kind == QCOW2__RUN_UNALLOC && !first.has_off;
        uint64_t end = guest_off + (hole ? limit : qcow2__min(len, limit));

        pos = (guest_off | (unit_size - 1)) + 1;
        if (hole && !img->extl2 && pos < end) {
            /*
             * The common long gap: all-zero entries, skipped four at a time
             * without classifying each (zero reads the same in any byte order).
             */
            const uint8_t *p = table + ((pos >> img->cluster_bits) & (img->l2_entries - 1)) * 8;
            uint64_t n = (end - pos + unit_size - 1) >> img->cluster_bits, k = 0;
            uint64_t w[4];

            while (k + 4 <= n) {
                memcpy(w, p + k * 8, sizeof(w));
                if (w[0] | w[1] | w[2] | w[3])
                    break;
                k += 4;
            }
            while (k < n) {
                memcpy(w, p + k * 8, 8);
                if (w[0])
                    break;
                k++;
            }
            pos += k << img->cluster_bits;
        }
        while (pos < end) {
            uint64_t idx = (pos >> img->cluster_bits) & (img->l2_entries - 1);
            const uint8_t *p = table + idx * img->l2e_bytes;
            uint64_t e = qcow2__be64(p), bm = img->extl2 ? qcow2__be64(p + 8) : 0;

            sc = (unsigned)((pos >> img->sc_bits) & (img->extl2 ? 31 : 0));
            rc = classify(img, e, bm, sc, l2_off, idx, &u);
            if (rc)
                return rc;
            if (u.kind != first.kind || u.has_off != first.has_off)
                break;
            expect_host += unit_size;
            if ((u.kind == QCOW2__RUN_DATA || u.has_off) && u.host_off != expect_host)
                break;
            pos += unit_size;
        }
        out->len = qcow2__min(pos, end) - guest_off;
        if (hole) {
            img->hole_start = guest_off;
            img->hole_end = guest_off + out->len;
            out->len = qcow2__min(out->len, len);
        }
    }
    return 0;
}

int qcow2__read_compressed(qcow2_image *img, uint64_t l2e, uint64_t in_off, void *buf, size_t len)
{
    uint64_t coff = l2e & img->coff_mask;
    uint64_t nb_sectors = ((l2e >> img->csize_shift) & img->csize_mask) + 1;
    uint64_t csize = nb_sectors * QCOW2_COMPRESSED_SECTOR - (coff & (QCOW2_COMPRESSED_SECTOR - 1));
    uint64_t avail;
    int rc;

    assert(in_off + len <= img->cluster_size);
    if (img->dbuf_host_off != l2e) {
        if (!img->dbuf) {
            img->dbuf = qcow2__malloc((size_t)img->cluster_size);
            img->cbuf = qcow2__malloc((size_t)img->cluster_size * 2);
            if (!img->dbuf || !img->cbuf)
                return qcow2__nomem();
        }
        /* The descriptor can claim up to two clusters; the file may end sooner. */
        csize = qcow2__min(csize, img->cluster_size * 2);
        avail = qcow2__min(csize, img->file_size - coff);
        img->dbuf_host_off = UINT64_MAX;
        rc = qcow2__io_read(img->io, img->name, img->cbuf, (size_t)avail, coff);
        if (rc)
            return rc;
        rc = qcow2__decompress(img->hdr.compression_type, img->dbuf, (size_t)img->cluster_size,
                               img->cbuf, (size_t)avail);
        if (rc)
            return qcow2__corrupt(img,
                                  "compressed cluster at 0x%" PRIx64 " (%" PRIu64
                                  " bytes) does not decompress",
                                  coff, csize);
        img->dbuf_host_off = l2e;
    }
    memcpy(buf, img->dbuf + in_off, len);
    return 0;
}
