/*
 * Reading guest data and allocation status across a backing chain. Each
 * layer answers for the ranges it allocates (cluster.c); unallocated ranges
 * fall through to the backing image, and read as zeroes past the end of a
 * shorter backing image or where there is none.
 */
#include <inttypes.h>

#include "qcow2_int.h"

/* A raw layer: holes read as zeroes without copying them from the kernel. */
static int read_raw(qcow2_image *img, uint8_t *buf, uint64_t len, uint64_t off)
{
    while (len) {
        uint64_t run;
        bool hole;
        int rc;

        if (off >= img->file_size) {
            memset(buf, 0, (size_t)len); /* the sector-rounded tail past the end of the file */
            return 0;
        }
        if (img->raw_ext_len && off >= img->raw_ext_off &&
            off < img->raw_ext_off + img->raw_ext_len) {
            /* The run found last time still covers off (reads of raw layers are sequential). */
            run = qcow2__min(len, img->raw_ext_off + img->raw_ext_len - off);
            hole = img->raw_ext_hole;
        } else {
            uint64_t whole;
            rc = qcow2__io_extent(img->io, img->name, off, img->file_size - off, &whole, &hole);
            if (rc)
                return rc;
            img->raw_ext_off = off;
            img->raw_ext_len = whole;
            img->raw_ext_hole = hole;
            run = qcow2__min(len, whole);
        }
        if (hole)
            memset(buf, 0, (size_t)run);
        else if ((rc = qcow2__io_read(img->io, img->name, buf, (size_t)run, off)) != 0)
            return rc;
        buf += run;
        off += run;
        len -= run;
    }
    return 0;
}

/* One run that layer img holds (data, zero or compressed) into buf. */
static int read_run(qcow2_image *img, const struct qcow2__lrun *r, uint8_t *buf, uint64_t off)
{
    switch (r->kind) {
    case QCOW2__RUN_DATA:
        return qcow2__io_read(img->io, img->name, buf, (size_t)r->len, r->host_off);
    case QCOW2__RUN_COMPRESSED:
        return qcow2__read_compressed(img, r->host_off, off & (img->cluster_size - 1), buf,
                                      (size_t)r->len);
    case QCOW2__RUN_ZERO:
    case QCOW2__RUN_UNALLOC:
        break;
    }
    memset(buf, 0, (size_t)r->len);
    return 0;
}

/*
 * off + len <= img->size. Piece by piece: walk down from img to the first
 * layer that holds off; every layer passed on the way bounds the piece by
 * its unallocated run there. Each layer remembers its last unallocated run
 * (cluster.c), so through a deep chain most steps are one range compare,
 * not a table lookup, and no step recurses.
 */
static int read_layer(qcow2_image *img, uint8_t *buf, uint64_t len, uint64_t off)
{
    while (len) {
        qcow2_image *cur = img;
        struct qcow2__lrun r;
        uint64_t n = len;
        int rc;

        for (;;) {
            if (cur->fmt != QCOW2_FORMAT_QCOW2) {
                rc = read_raw(cur, buf, n, off);
                break;
            }
            if (off >= cur->hole_start && off < cur->hole_end) {
                n = qcow2__min(n, cur->hole_end - off);
            } else {
                rc = qcow2__layer_extent(cur, off, n, &r);
                if (rc)
                    return rc;
                n = r.len;
                if (r.kind != QCOW2__RUN_UNALLOC) {
                    rc = read_run(cur, &r, buf, off);
                    break;
                }
            }
            if (!cur->backing || off >= cur->backing->size) {
                memset(buf, 0, (size_t)n); /* nothing below: zeroes */
                rc = 0;
                break;
            }
            n = qcow2__min(n, cur->backing->size - off);
            cur = cur->backing;
        }
        if (rc)
            return rc;
        buf += n;
        off += n;
        len -= n;
    }
    return 0;
}

int qcow2_image_read(qcow2_image *img, void *buf, size_t len, uint64_t guest_off)
{
    if (!img || (!buf && len))
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "qcow2_image_read: missing argument");
    if (!qcow2__in_range(guest_off, len, img->size))
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "read of %zu bytes at 0x%" PRIx64 " is beyond the virtual size (%" PRIu64
                          " bytes)",
                          len, guest_off, img->size);
    return read_layer(img, buf, len, guest_off);
}

/* Status of [off, off+len) in one raw layer: data, or a hole that reads as zeroes. */
static int raw_status(qcow2_image *img, uint64_t off, uint64_t len, qcow2_extent *out)
{
    uint64_t run;
    bool hole;
    int rc;

    if (off >= img->file_size) {
        out->length = len;
        out->flags = QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO | QCOW2_EXT_OFFSET_VALID;
        out->host_off = off;
        return 0;
    }
    rc = qcow2__io_extent(img->io, img->name, off, qcow2__min(len, img->file_size - off), &run,
                          &hole);
    if (rc)
        return rc;
    out->length = run;
    out->host_off = off;
    out->flags = QCOW2_EXT_PRESENT | QCOW2_EXT_OFFSET_VALID |
                 (hole ? QCOW2_EXT_ZERO : QCOW2_EXT_DATA);
    return 0;
}

/*
 * Whether the image looks metadata-preallocated: it has clearly more
 * refcounted clusters than the file system holds (at least the larger of
 * 10/9 and 2 more than the allocated clusters). qemu decides the same way,
 * and only then reports the holes inside allocated clusters as zeroes.
 */
static int detect_prealloc(qcow2_image *img)
{
    uint64_t alloc, real, threshold, end, count = 0;
    int rc;

    img->prealloc_checked = true;
    rc = qcow2__io_allocated(img->io, img->name, &alloc);
    if (rc)
        return rc;
    real = alloc >> img->cluster_bits;
    threshold = qcow2__max(real * 10 / 9, real + 2);
    end = (img->file_size + img->cluster_size - 1) >> img->cluster_bits;
    for (uint64_t i = 0; i < end && count < threshold; i++) {
        uint64_t refcount;
        /* Damaged refcounts must not stop a read: then it is simply not preallocated. */
        if (qcow2__refcount_get(img, i, &refcount))
            return 0;
        count += refcount != 0;
    }
    img->metadata_prealloc = count >= threshold;
    return 0;
}

/*
 * In a metadata-preallocated image, allocated clusters whose bytes are a
 * hole in the file read as zeroes: say so, as qemu does, so nobody reads them.
 */
static int data_holes(qcow2_image *img, qcow2_extent *out)
{
    uint64_t run;
    bool hole;
    int rc;

    if (!img->prealloc_checked) {
        rc = detect_prealloc(img);
        if (rc)
            return rc;
    }
    if (!img->metadata_prealloc || out->host_off >= img->file_size)
        return 0;
    rc = qcow2__io_extent(img->io, img->name, out->host_off,
                          qcow2__min(out->length, img->file_size - out->host_off), &run, &hole);
    if (rc)
        return rc;
    if (hole)
        out->flags |= QCOW2_EXT_ZERO;
    out->length = run;
    return 0;
}

int qcow2_image_block_status(qcow2_image *img, const qcow2_image *base, uint64_t guest_off,
                             uint64_t len, qcow2_extent *out)
{
    qcow2_image *cur = img;
    unsigned depth = 0;
    int rc;

    if (!img || !out || len == 0 || !qcow2__in_range(guest_off, len, img->size))
        return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL,
                          "block status of %" PRIu64 " bytes at 0x%" PRIx64
                          " is outside the image",
                          len, guest_off);
    memset(out, 0, sizeof(*out));
    out->start = guest_off;
    for (;;) {
        struct qcow2__lrun r;

        out->depth = depth;
        out->layer = cur;
        if (cur == base) {
            /* Not allocated above base: the caller decides what base holds. */
            out->length = len;
            out->flags = 0;
            return 0;
        }
        if (cur->fmt != QCOW2_FORMAT_QCOW2)
            return raw_status(cur, guest_off, len, out);
        rc = qcow2__layer_extent(cur, guest_off, len, &r);
        if (rc)
            return rc;
        out->length = r.len;
        switch (r.kind) {
        case QCOW2__RUN_DATA:
            out->flags = QCOW2_EXT_PRESENT | QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID;
            out->host_off = r.host_off;
            return data_holes(cur, out);
        case QCOW2__RUN_COMPRESSED:
            out->flags = QCOW2_EXT_PRESENT | QCOW2_EXT_DATA | QCOW2_EXT_COMPRESSED;
            return 0;
        case QCOW2__RUN_ZERO:
            out->flags = QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO;
            if (r.has_off) {
                out->flags |= QCOW2_EXT_OFFSET_VALID;
                out->host_off = r.host_off + (guest_off & ((1ull << cur->sc_bits) - 1));
            }
            return 0;
        case QCOW2__RUN_UNALLOC:
            break;
        }
        len = r.len;
        if (!cur->backing || guest_off >= cur->backing->size) {
            /* Nothing below: reads as zeroes. */
            out->flags = QCOW2_EXT_ZERO;
            if (r.has_off) {
                out->flags |= QCOW2_EXT_OFFSET_VALID;
                out->host_off = r.host_off + (guest_off & ((1ull << cur->sc_bits) - 1));
            }
            return 0;
        }
        len = qcow2__min(len, cur->backing->size - guest_off);
        cur = cur->backing;
        depth++;
    }
}

void qcow2__prefetch(qcow2_image *img, const qcow2_image *base, uint64_t guest_off, uint64_t len)
{
    qcow2_image *run_layer = NULL;
    uint64_t run_off = 0, run_len = 0;
    unsigned steps = 0;

    if (guest_off >= img->size)
        return;
    len = qcow2__min(len, img->size - guest_off);
    while (len && steps++ < 4096) {
        qcow2_extent e;

        if (qcow2_image_block_status(img, base, guest_off, len, &e))
            break;
        if ((e.flags & QCOW2_EXT_DATA) && (e.flags & QCOW2_EXT_OFFSET_VALID) &&
            !(e.flags & QCOW2_EXT_ZERO)) {
            /* Merge host-contiguous runs of one layer into one hint. */
            if (e.layer == run_layer && run_off + run_len == e.host_off) {
                run_len += e.length;
            } else {
                if (run_layer)
                    qcow2__io_advise(run_layer->io, run_off, run_len, QCOW2_IO_ADVISE_WILLNEED);
                run_layer = e.layer;
                run_off = e.host_off;
                run_len = e.length;
            }
        }
        guest_off += e.length;
        len -= e.length;
    }
    if (run_layer)
        qcow2__io_advise(run_layer->io, run_off, run_len, QCOW2_IO_ADVISE_WILLNEED);
    qcow2_error_clear(); /* a hint: whatever failed here is found again by the real read */
}

void qcow2__prefetch_ahead(qcow2_image *img, const qcow2_image *base, uint64_t guest_off,
                           uint64_t *pf_end)
{
    if (*pf_end < guest_off)
        *pf_end = guest_off;
    while (*pf_end < img->size && *pf_end < guest_off + 2ull * QCOW2_PREFETCH_WINDOW) {
        qcow2__prefetch(img, base, *pf_end, QCOW2_PREFETCH_WINDOW);
        *pf_end += QCOW2_PREFETCH_WINDOW;
    }
}
