/*
 * Guest data shared with another file instead of copied (reflink:
 * FICLONERANGE on XFS and btrfs), for qcow2__write_shared() (write.c) when a
 * commit writes a layer's data into a qcow2 base. The shares are put off
 * and merged while the pieces stay contiguous in both files, then made
 * before any table that can point at them is written (flush.c) and before
 * any other write or read of the image; where the file system refuses, or
 * the offsets are not aligned to its blocks, the data is copied.
 */
#include "qcow2_int.h"

#define SHARE_RUN_BYTES (256ull << 20) /* most bytes one put-off share covers */
#define SHARE_COPY_BYTES (2u << 20)    /* bounce buffer of a share copied instead */

/* Copy [from, from+len) of src to host offset host of img's file, in bounded pieces. */
static int copy_in(qcow2_image *img, qcow2_io *src, const char *src_name, uint64_t host,
                   uint64_t from, uint64_t len)
{
    size_t step = (size_t)qcow2__min(len, SHARE_COPY_BYTES);
    uint8_t *bounce = qcow2__malloc(step);
    int rc = 0;

    if (!bounce)
        return qcow2__nomem();
    while (!rc && len) {
        size_t n = (size_t)qcow2__min(len, step);
        rc = qcow2__io_read(src, src_name, bounce, n, from);
        if (!rc)
            rc = qcow2__io_write(img->io, img->name, bounce, n, host);
        host += n;
        from += n;
        len -= n;
    }
    qcow2__free(bounce);
    return rc;
}

/* Make the share of slot i now (a copy where the file system refuses) and free the slot. */
static int share_slot(qcow2_image *img, unsigned i)
{
    struct qcow2__pend p = img->pend[i];
    int rc;

    img->pend[i] = img->pend[--img->pend_n];
    rc = qcow2__io_clone(img->io, img->name, p.host, p.src, p.from, p.len);
    if (rc == 0) {
        img->share_refused = p.src; /* this file system will not: copy from now on */
        rc = copy_in(img, p.src, p.name, p.host, p.from, p.len);
    }
    return rc < 0 ? qcow2__fatal(img, rc) : 0;
}

int qcow2__share_drain(qcow2_image *img)
{
    while (img->pend_n) {
        int rc = share_slot(img, img->pend_n - 1);
        if (rc)
            return rc;
    }
    return 0;
}

/*
 * The bytes of guest [guest, guest+len) from img->share_src, to host offset
 * host of img's file, shared where they can be. Sharing is safe for ever
 * after: the file system copies a shared block when either file writes it
 * (an in-place rewrite of a data cluster included), so no write to one file
 * can reach the other.
 *
 * A share is put off rather than made at once, so that pieces contiguous in
 * both files (a scattered overlay read in file order into clusters the base
 * allocates one after the other) take one FICLONERANGE instead of one per
 * cluster. A few runs are grown at once (QCOW2__PEND_SLOTS), so that pieces
 * rewritten in place elsewhere in the file do not cut the run of new
 * clusters; the run grown least recently is made when a slot is needed.
 *
 * The write order stays as without the batching: the L2 entries and
 * refcounts set meanwhile live only in the metadata cache, and every path
 * that writes a table back goes through qcow2__metadata_flush() (a cache
 * eviction included), which makes every pending share, and syncs it, before
 * the first table; any other write or read of the chain makes them first
 * too. A share the file system refuses is copied then.
 */
int qcow2__share_put(qcow2_image *img, uint64_t len, uint64_t host, uint64_t guest)
{
    uint64_t from = guest + img->share_delta;
    int rc;

    if (img->share_refused == img->share_src || ((host | from | len) & (QCOW2__CLONE_ALIGN - 1)))
        return copy_in(img, img->share_src, img->share_name, host, from, len);
    img->pend_tick++;
    for (unsigned i = 0; i < img->pend_n; i++) {
        struct qcow2__pend *run = &img->pend[i];
        if (run->src == img->share_src && host == run->host + run->len &&
            from == run->from + run->len && run->len + len <= SHARE_RUN_BYTES) {
            run->len += len;
            run->used = img->pend_tick;
            return 0;
        }
    }
    if (img->pend_n == QCOW2__PEND_SLOTS) {
        unsigned lru = 0;
        for (unsigned i = 1; i < img->pend_n; i++) {
            if (img->pend[i].used < img->pend[lru].used)
                lru = i;
        }
        rc = share_slot(img, lru);
        if (rc)
            return rc;
    }
    img->pend[img->pend_n++] = (struct qcow2__pend){img->share_src, img->share_name, host, from, len,
                                                    img->pend_tick};
    return 0;
}
