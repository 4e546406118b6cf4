/*
 * The ordered metadata flush that makes writes crash-safe, and the image's
 * write state: a write that failed half way makes the image unusable until
 * it is reopened (qcow2__fatal), and every mutating call checks first that
 * it may write (qcow2__check_writable). qcow2__metadata_flush() writes the
 * metadata cache out in dependency order:
 *
 *     data -> refcount blocks -> refcount table -> L2 tables -> L1 -> header
 *
 * with a flush between steps, so every table on disk only ever points at
 * complete, refcounted clusters; shares put off (share.c) are data and are
 * made first. write.c keeps the tables in the cache until then. Also the
 * one header change a first write makes here: persistent bitmaps dropped
 * (qcow2__drop_bitmaps).
 */
#include "qcow2_int.h"

int qcow2__fatal(qcow2_image *img, int rc)
{
    if (img->state == QCOW2__OPEN_RW) {
        img->state = QCOW2__FATAL;
        /* Nothing is written back any more: a share put off is dropped with its tables. */
        img->pend_n = 0;
        if (QCOW2_ERROR_CLASS(rc) == QCOW2_ECORRUPT && img->fmt == QCOW2_FORMAT_QCOW2 &&
            img->hdr.version >= 3) {
            /* Best effort, as qemu: mark the image so nobody writes it before a repair. */
            uint8_t flag[8];
            qcow2__put_be64(flag, img->hdr.incompat | QCOW2_INCOMPAT_CORRUPT);
            if (img->io->ops->pwrite(img->io, flag, 8, 72) == 0)
                img->io->ops->flush(img->io);
        }
    }
    return rc;
}

int qcow2__check_writable(qcow2_image *img)
{
    if (img->state == QCOW2__FATAL)
        return qcow2__err(QCOW2_EFATAL, 0, img->name,
                          "an earlier write failed; close and reopen the image");
    if (img->state != QCOW2__OPEN_RW)
        return qcow2__err(QCOW2_EREADONLY, 0, img->name, "image is opened read-only");
    if (img->fmt == QCOW2_FORMAT_QCOW2 && img->rt_broken)
        return qcow2__err(QCOW2_EREADONLY, 0, img->name,
                          "the refcount table is unusable; repair it with 'qsnap image check -r all'");
    if (img->fmt == QCOW2_FORMAT_QCOW2 && (img->hdr.incompat & QCOW2_INCOMPAT_CORRUPT))
        return qcow2__err(QCOW2_EREADONLY, 0, img->name,
                          "image is marked corrupt; repair it with 'qsnap image check -r all'");
    return 0;
}

static int write_reftable(qcow2_image *img)
{
    size_t bytes = (size_t)img->rt_entries * 8;
    uint8_t *raw = qcow2__malloc(bytes);
    int rc;

    if (!raw)
        return qcow2__nomem();
    for (uint64_t i = 0; i < img->rt_entries; i++)
        qcow2__put_be64(raw + i * 8, img->reftable[i]);
    rc = qcow2__io_write(img->io, img->name, raw, bytes, img->hdr.rt_off);
    qcow2__free(raw);
    return rc;
}

static int write_l1(qcow2_image *img)
{
    size_t bytes = (size_t)img->hdr.l1_size * 8;
    uint8_t *raw = qcow2__malloc(bytes);
    int rc;

    if (!raw)
        return qcow2__nomem();
    for (uint64_t i = 0; i < img->hdr.l1_size; i++)
        qcow2__put_be64(raw + i * 8, img->l1[i]);
    rc = qcow2__io_write(img->io, img->name, raw, bytes, img->hdr.l1_off);
    qcow2__free(raw);
    return rc;
}

static int flush_steps(qcow2_image *img)
{
    int rc;

    rc = qcow2__sync(img); /* guest data first */
    if (rc)
        return rc;
    if (qcow2__cache_is_dirty(&img->rbc)) {
        rc = qcow2__cache_writeback(img, &img->rbc);
        if (!rc)
            rc = qcow2__sync(img);
        if (rc)
            return rc;
    }
    if (img->rt_dirty) {
        rc = write_reftable(img);
        if (!rc)
            rc = qcow2__sync(img);
        if (rc)
            return rc;
        img->rt_dirty = false;
    }
    if (qcow2__cache_is_dirty(&img->l2c)) {
        rc = qcow2__cache_writeback(img, &img->l2c);
        if (!rc)
            rc = qcow2__sync(img);
        if (rc)
            return rc;
    }
    if (img->l1_dirty) {
        rc = write_l1(img);
        if (!rc)
            rc = qcow2__sync(img);
        if (rc)
            return rc;
        img->l1_dirty = false;
    }
    if (img->header_dirty) {
        rc = qcow2__header_write(img);
        if (rc)
            return rc;
    }
    if (img->nb_pending) {
        rc = qcow2__apply_pending_frees(img);
        if (!rc)
            rc = qcow2__cache_writeback(img, &img->rbc);
        if (!rc)
            rc = qcow2__sync(img);
    }
    return rc;
}

int qcow2__metadata_flush(qcow2_image *img)
{
    int rc;

    if (img->state == QCOW2__FATAL)
        return qcow2__err(QCOW2_EFATAL, 0, img->name,
                          "an earlier write failed; close and reopen the image");
    if (img->state != QCOW2__OPEN_RW)
        return 0;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__sync(img);
    /* The data of a share put off goes first: the tables written below may point at it. */
    rc = qcow2__share_drain(img);
    if (!rc)
        rc = flush_steps(img);
    return rc ? qcow2__fatal(img, rc) : 0;
}

int qcow2_image_flush(qcow2_image *img)
{
    int rc = qcow2__check_writable(img);

    if (rc == QCOW2_EREADONLY && img->state == QCOW2__OPEN_RO)
        return 0;
    if (rc)
        return rc;
    return qcow2__metadata_flush(img);
}

/* Called by close: make everything durable and leave a clean header. */
int qcow2__close_flush(qcow2_image *img)
{
    int rc;

    if (img->state != QCOW2__OPEN_RW)
        return 0;
    rc = qcow2__metadata_flush(img);
    if (rc || img->fmt != QCOW2_FORMAT_QCOW2)
        return rc;
    /* Only a dirty bit this handle set (lazy refcounts) is ours to clear: one found at
     * open (QCOW2_OPEN_CHECK, no repair) still means the refcounts are not trusted. */
    if ((img->hdr.incompat & QCOW2_INCOMPAT_DIRTY) && img->write_started &&
        (img->hdr.compat & QCOW2_COMPAT_LAZY_REFCOUNTS)) {
        img->hdr.incompat &= ~QCOW2_INCOMPAT_DIRTY;
        rc = qcow2__header_write(img);
    }
    return rc;
}

/* Queue the release of clusters [off, off + len bytes rounded up), if inside the file. */
static int free_span(qcow2_image *img, uint64_t off, uint64_t len)
{
    uint64_t bytes = qcow2__align_up(len, img->cluster_size);

    /* The last structure of a file may end before its cluster does. */
    if (!off || (off & (img->cluster_size - 1)) || !qcow2__in_range(off, len, img->file_size))
        return 0; /* damaged: leave it (a leak at worst, never a wrong free) */
    return qcow2__free_later(img, off, bytes);
}

/*
 * Persistent bitmaps are not maintained by this library, so the first write
 * drops them: the extension leaves the header (durably), then the directory,
 * the bitmap tables and their data clusters are freed. qemu would otherwise
 * see stale bitmaps, and its check would call their clusters leaked.
 */
int qcow2__drop_bitmaps(qcow2_image *img)
{
    const uint8_t *ext = img->bitmaps_ext;
    uint64_t dir_size = qcow2__be64(ext + 8), dir_off = qcow2__be64(ext + 16);
    uint8_t *dir = NULL, *table = NULL;
    int rc;

    /* header.c validated the count, the directory size cap and its place. */
    dir = qcow2__malloc((size_t)dir_size);
    if (!dir)
        return qcow2__nomem();
    rc = qcow2__io_read(img->io, img->name, dir, (size_t)dir_size, dir_off);
    if (rc)
        goto out;
    qcow2__free(img->bitmaps_ext);
    img->bitmaps_ext = NULL;
    img->bitmaps_ext_len = 0;
    img->nb_bitmaps = 0;
    img->hdr.autoclear = 0;
    rc = qcow2__header_write(img);
    if (rc)
        goto out;
    for (uint64_t pos = 0; pos + 24 <= dir_size;) {
        uint64_t table_off = qcow2__be64(dir + pos);
        uint32_t table_size = qcow2__be32(dir + pos + 8);
        uint16_t name_size = qcow2__be16(dir + pos + 18);
        uint32_t extra = qcow2__be32(dir + pos + 20);
        uint64_t tbytes = (uint64_t)table_size * 8;

        if (tbytes && tbytes <= QCOW2_MAX_L1_BYTES && !(table_off & (img->cluster_size - 1)) &&
            qcow2__in_range(table_off, tbytes, img->file_size)) {
            table = qcow2__malloc((size_t)tbytes);
            if (!table) {
                rc = qcow2__nomem();
                goto out;
            }
            rc = qcow2__io_read(img->io, img->name, table, (size_t)tbytes, table_off);
            for (uint64_t i = 0; !rc && i < table_size; i++)
                rc = free_span(img, qcow2__be64(table + i * 8) & QCOW2_L2E_OFFSET_MASK,
                               img->cluster_size);
            qcow2__free(table);
            table = NULL;
            if (!rc)
                rc = free_span(img, table_off, tbytes);
            if (rc)
                goto out;
        }
        pos += qcow2__align_up(24 + (uint64_t)extra + name_size, 8);
    }
    rc = free_span(img, dir_off, dir_size);
out:
    qcow2__free(dir);
    return rc;
}
