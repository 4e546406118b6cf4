/*
 * Whole-image operations over the public read API: digest, compare and
 * convert (flatten to raw). They walk qcow2_image_block_status() so zero and
 * unallocated ranges are never read byte by byte, and read data in large
 * batches.
 */
#include <errno.h>
#include <inttypes.h>
#include <unistd.h>

#include "qcow2_int.h"

#define OPS_CHUNK (2u << 20) /* bytes read or compared per step */

/* Whether a guest run reads as zeroes (no layer holds data for it). */
static bool ext_is_zero(const qcow2_extent *e)
{
    return (e->flags & QCOW2_EXT_ZERO) != 0;
}

int qcow2_image_digest(qcow2_image *img, uint8_t digest_out[16], qcow2_progress_fn progress,
                       void *payload)
{
    qcow2__digest *d = NULL;
    uint8_t *buf = NULL;
    uint64_t off = 0, pf_end = 0;
    int rc;

    rc = qcow2__digest_new(&d, img->size);
    if (rc)
        return rc;
    buf = qcow2__malloc(OPS_CHUNK);
    if (!buf) {
        rc = qcow2__nomem();
        goto out;
    }
    while (off < img->size) {
        qcow2_extent e;

        qcow2__prefetch_ahead(img, NULL, off, &pf_end);
        /* Zero runs cost one record however long: ask for as long a run as there is. */
        rc = qcow2_image_block_status(img, NULL, off, img->size - off, &e);
        if (rc)
            goto out;
        if (ext_is_zero(&e)) {
            qcow2__digest_zeroes(d, e.length);
        } else {
            e.length = qcow2__min(e.length, OPS_CHUNK * 16);
            for (uint64_t done = 0; done < e.length;) {
                size_t n = (size_t)qcow2__min(e.length - done, OPS_CHUNK);
                rc = qcow2_image_read(img, buf, n, off + done);
                if (rc)
                    goto out;
                qcow2__digest_data(d, buf, n);
                done += n;
            }
        }
        off += e.length;
        if (progress)
            progress(off, img->size, payload);
    }
    qcow2__digest_final(d, digest_out);
out:
    qcow2__free(buf);
    qcow2__digest_free(d);
    return rc;
}

/* Index of the first differing 512-byte sector start, in bytes, or len when equal. */
static uint64_t first_mismatch(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 512) {
        size_t n = (size_t)qcow2__min(512, len - i);
        if (memcmp(a + i, b + i, n) != 0)
            return i;
    }
    return len;
}

static uint64_t first_nonzero(const uint8_t *a, uint64_t len)
{
    for (uint64_t i = 0; i < len; i += 512) {
        size_t n = (size_t)qcow2__min(512, len - i);
        for (size_t j = 0; j < n; j++) {
            if (a[i + j])
                return i;
        }
    }
    return len;
}

/* Read [off, off+n) of img into buf, or zero-fill when the chain says zero. */
static int read_or_zero(qcow2_image *img, uint8_t *buf, uint64_t n, uint64_t off, bool zero)
{
    if (zero) {
        memset(buf, 0, (size_t)n);
        return 0;
    }
    return qcow2_image_read(img, buf, (size_t)n, off);
}

/* Whether a failed read is one that convert --salvage reads past (bad data, not memory). */
static bool conv_salvageable(int rc)
{
    return QCOW2_ERROR_CLASS(rc) == QCOW2_ECORRUPT || QCOW2_ERROR_CLASS(rc) == QCOW2_EIO;
}

/*
 * After a read of [off, off+n) failed with bad data: read it again sector by
 * sector; each 512-byte sector that still fails reads as zeroes, with bad[i]
 * set (when bad is given) and reported through o->read_error (when o is).
 */
static int read_by_sector(qcow2_image *img, uint8_t *buf, uint64_t n, uint64_t off, uint8_t *bad,
                          const qcow2_convert_opts *o)
{
    for (uint64_t i = 0; i < n; i += 512) {
        uint64_t len = qcow2__min(512, n - i);
        int rc = qcow2_image_read(img, buf + i, (size_t)len, off + i);

        if (rc && !conv_salvageable(rc))
            return rc;
        if (rc) {
            memset(buf + i, 0, (size_t)len);
            if (bad)
                bad[i / 512] = 1;
            if (o && o->read_error)
                o->read_error(off + i, rc, o->payload);
        }
    }
    return 0;
}

/*
 * Read [off, off+n) of a convert's source into buf (zeroes when zero is
 * set). With salvage, a failed read is tried again sector by sector: the
 * sectors that still fail read as zeroes, each one reported through
 * read_error, as qemu-img convert --salvage does.
 */
static int conv_read(qcow2_image *src, uint8_t *buf, uint64_t n, uint64_t off, bool zero,
                     const qcow2_convert_opts *o)
{
    int rc = read_or_zero(src, buf, n, off, zero);

    if (!rc || !o->salvage || !conv_salvageable(rc))
        return rc;
    return read_by_sector(src, buf, n, off, NULL, o);
}

/* The tail of the larger image must read as zeroes; *mismatch set when it does not. */
static int check_tail_zero(qcow2_image *img, uint64_t from, uint8_t *buf, uint64_t *mismatch)
{
    uint64_t off = from;
    int rc;

    while (off < img->size) {
        qcow2_extent e;
        uint64_t n;

        rc = qcow2_image_block_status(img, NULL, off, img->size - off, &e);
        if (rc)
            return rc;
        n = e.length;
        if (!ext_is_zero(&e)) {
            n = qcow2__min(n, OPS_CHUNK);
            uint64_t at;
            rc = qcow2_image_read(img, buf, (size_t)n, off);
            if (rc)
                return rc;
            at = first_nonzero(buf, n);
            if (at < n) {
                *mismatch = off + at;
                return 1;
            }
        }
        off += n;
    }
    return 0;
}

/* What qemu-img compare -s compares of a run's status: allocation, zero, data, offset, end. */
static unsigned strict_bits(const qcow2_extent *e, uint64_t size)
{
    unsigned bits = e->flags & (QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO | QCOW2_EXT_DATA |
                                QCOW2_EXT_OFFSET_VALID);

    return bits | (e->start + e->length == size ? 0x10000u : 0);
}

int qcow2_image_compare(qcow2_image *a, qcow2_image *b, bool strict, uint64_t *mismatch_off_out,
                        qcow2_progress_fn progress, void *payload)
{
    uint64_t common = qcow2__min(a->size, b->size);
    uint64_t total = qcow2__max(a->size, b->size);
    uint64_t off = 0, mismatch = 0, pf_a = 0, pf_b = 0;
    uint8_t *ba = NULL, *bb = NULL;
    int rc = 0;

    if (mismatch_off_out)
        *mismatch_off_out = 0;
    if (strict && a->size != b->size) {
        if (mismatch_off_out)
            *mismatch_off_out = common;
        return 1;
    }
    ba = qcow2__malloc(OPS_CHUNK);
    bb = qcow2__malloc(OPS_CHUNK);
    if (!ba || !bb) {
        rc = qcow2__nomem();
        goto out;
    }
    while (off < common) {
        qcow2_extent ea, eb;
        uint64_t n, at;

        qcow2__prefetch_ahead(a, NULL, off, &pf_a);
        qcow2__prefetch_ahead(b, NULL, off, &pf_b);

        /* Strict: runs as long as they go (qemu compares the end-of-image bit too). */
        rc = qcow2_image_block_status(a, NULL, off,
                                      strict ? a->size - off : qcow2__min(common - off, OPS_CHUNK),
                                      &ea);
        if (rc)
            goto out;
        rc = qcow2_image_block_status(b, NULL, off, strict ? b->size - off : ea.length, &eb);
        if (rc)
            goto out;
        if (strict && (strict_bits(&ea, a->size) != strict_bits(&eb, b->size))) {
            mismatch = off;
            rc = 1;
            goto out;
        }
        n = qcow2__min(qcow2__min(ea.length, eb.length), qcow2__min(common - off, OPS_CHUNK));
        ea.length = eb.length = n;
        if (!(ext_is_zero(&ea) && ext_is_zero(&eb))) {
            rc = read_or_zero(a, ba, n, off, ext_is_zero(&ea));
            if (rc)
                goto out;
            rc = read_or_zero(b, bb, n, off, ext_is_zero(&eb));
            if (rc)
                goto out;
            at = first_mismatch(ba, bb, n);
            if (at < n) {
                mismatch = off + at;
                rc = 1;
                goto out;
            }
        }
        off += n;
        if (progress)
            progress(off, total, payload);
    }
    if (a->size != b->size) {
        rc = check_tail_zero(a->size > b->size ? a : b, common, ba, &mismatch);
        if (rc)
            goto out;
    }
    if (progress)
        progress(total, total, payload);
out:
    if (rc == 1 && mismatch_off_out)
        *mismatch_off_out = mismatch;
    qcow2__free(ba);
    qcow2__free(bb);
    return rc;
}

/* Write buf[0..n) at off, leaving aligned zero runs of at least min_sparse as holes. */
static int write_sparse(qcow2_io *io, const char *name, const uint8_t *buf, uint64_t n,
                        uint64_t off, uint64_t min_sparse)
{
    const uint64_t blk = 4096;
    uint64_t i = 0, data_start = 0;
    int rc;

    if (!min_sparse)
        return qcow2__io_write(io, name, buf, (size_t)n, off);
    while (i < n) {
        uint64_t z = i;
        /* Length of the zero run starting at i, in whole blocks (or up to n). */
        while (z < n) {
            uint64_t bl = qcow2__min(blk, n - z);
            if (first_nonzero(buf + z, bl) < bl)
                break;
            z += bl;
        }
        if (z - i >= min_sparse || (z == n && z > i && z - i >= qcow2__min(min_sparse, n))) {
            rc = qcow2__io_write(io, name, buf + data_start, (size_t)(i - data_start),
                                 off + data_start);
            if (rc)
                return rc;
            data_start = z;
            i = z;
        } else {
            i = (z > i ? z : i) + qcow2__min(blk, n - (z > i ? z : i));
        }
    }
    return qcow2__io_write(io, name, buf + data_start, (size_t)(n - data_start), off + data_start);
}

/* Whether buf[0..n) is all zeroes. */
static bool all_zero(const uint8_t *buf, uint64_t n)
{
    return first_nonzero(buf, n) == n;
}

/*
 * Progress of a convert as qemu-img convert -p counts it: over the bytes it
 * copies (data, and zeroes too when min_sparse is 0), one step after each
 * extent of at most OPS_CHUNK bytes, and a last one at the end.
 */
struct conv_progress {
    const qcow2_convert_opts *o;
    qcow2_image *src;
    uint64_t cursor; /* guest offset up to which the steps are shown */
    uint64_t done;   /* bytes */
    uint64_t total;  /* bytes */
};

static bool conv_counts(const qcow2_extent *e, const qcow2_convert_opts *o)
{
    return !ext_is_zero(e) || !o->min_sparse;
}

static int conv_progress_init(struct conv_progress *p, qcow2_image *src, const qcow2_convert_opts *o)
{
    p->o = o;
    p->src = src;
    p->cursor = p->done = p->total = 0;
    if (!o->progress)
        return 0;
    for (uint64_t off = 0; off < src->size;) {
        qcow2_extent e;
        int rc = qcow2_image_block_status(src, NULL, off, qcow2__min(src->size - off, OPS_CHUNK), &e);

        if (rc)
            return rc;
        if (conv_counts(&e, o))
            p->total += e.length;
        off += e.length;
    }
    return 0;
}

/*
 * The copy has passed copied_to: one step for each extent of the counting
 * walk that ends there or before (the copy itself may move in other pieces).
 */
static void conv_progress_to(struct conv_progress *p, uint64_t copied_to)
{
    if (!p->o->progress)
        return;
    while (p->cursor < copied_to) {
        qcow2_extent e;

        if (qcow2_image_block_status(p->src, NULL, p->cursor,
                                     qcow2__min(p->src->size - p->cursor, OPS_CHUNK), &e) ||
            p->cursor + e.length > copied_to)
            return;
        p->cursor += e.length;
        if (conv_counts(&e, p->o)) {
            p->done = qcow2__min(p->done + e.length, p->total);
            p->o->progress(p->done, p->total, p->o->payload);
        }
    }
}

static void conv_progress_end(struct conv_progress *p)
{
    if (p->o->progress)
        p->o->progress(p->total, p->total, p->o->payload);
}

/*
 * Write one run of source data into a qcow2 target. Runs are cluster
 * aligned (except at the end of the image). Zero blocks of min_sparse bytes
 * are left unallocated (the target is new: it reads as zeroes); with
 * compress, every non-zero cluster is written compressed.
 */
static int write_qcow2_run(qcow2_image *dst, const uint8_t *buf, uint64_t n, uint64_t off,
                           const qcow2_convert_opts *o)
{
    uint64_t cs = dst->cluster_size;
    uint64_t step = o->compress ? cs : qcow2__max(o->min_sparse, 512);
    uint64_t i = 0, data_start = 0;
    int rc;

    if (!o->min_sparse && !o->compress)
        return qcow2_image_write(dst, buf, (size_t)n, off);
    while (i < n) {
        uint64_t len = qcow2__min(step - ((off + i) % step), n - i);
        bool zero = all_zero(buf + i, len);

        if (o->compress) {
            if (!zero) {
                rc = qcow2_image_write_compressed(dst, buf + i, (size_t)len, off + i);
                if (rc)
                    return rc;
            }
        } else if (zero) {
            rc = qcow2_image_write(dst, buf + data_start, (size_t)(i - data_start),
                                   off + data_start);
            if (rc)
                return rc;
            data_start = i + len;
        }
        i += len;
    }
    if (!o->compress && data_start < n)
        return qcow2_image_write(dst, buf + data_start, (size_t)(n - data_start), off + data_start);
    return 0;
}

/*
 * Read [off, off+n) of img into buf; a read that fails with bad data is tried
 * again sector by sector, and each 512-byte sector that still fails reads as
 * zeroes with bad[i] set (bad has n / 512 rounded up entries, cleared first).
 */
static int read_marking(qcow2_image *img, uint8_t *buf, uint64_t n, uint64_t off, uint8_t *bad)
{
    int rc = qcow2_image_read(img, buf, (size_t)n, off);

    memset(bad, 0, (size_t)((n + 511) / 512));
    if (!rc || !conv_salvageable(rc))
        return rc;
    return read_by_sector(img, buf, n, off, bad, NULL);
}

/*
 * With a backing file in the output (-B), write only the clusters whose
 * content differs from what the new image already reads through it.
 *
 * Both reads go on past bad sectors (read_marking). A sector that neither SRC
 * nor the new backing file can read is the same damage seen twice (most often
 * BACKING is SRC's own backing file, whose damage SRC reads through): it is
 * left to the backing file, so DST fails there as SRC does, and nothing is
 * reported, as qemu-img convert -B, which reads only SRC's top layer, leaves
 * it. A sector only the backing file cannot read makes its cluster differ. A
 * sector only SRC cannot read fails the convert, or with salvage is zeroes in
 * DST and reported, as without -B.
 */
static int convert_over_backing(qcow2_image *src, qcow2_image *dst, const qcow2_convert_opts *o,
                                uint8_t *sbuf, uint8_t *dbuf, uint64_t chunk)
{
    uint64_t cs = dst->cluster_size, sectors = (chunk + 511) / 512;
    uint8_t *sbad = qcow2__malloc((size_t)sectors * 2), *dbad = sbad + sectors;
    int rc = 0;

    if (!sbad)
        return qcow2__nomem();
    for (uint64_t off = 0; off < src->size;) {
        uint64_t n = qcow2__min(chunk, src->size - off);

        rc = read_marking(src, sbuf, n, off, sbad);
        if (!rc)
            rc = read_marking(dst, dbuf, n, off, dbad);
        for (uint64_t i = 0; !rc && i < n; i += cs) {
            uint64_t len = qcow2__min(cs, n - i);
            bool same = true;

            for (uint64_t j = i; same && j < i + len; j += 512) {
                uint64_t k = j / 512, sl = qcow2__min(512, i + len - j);
                if (sbad[k] != dbad[k])
                    same = false;
                else if (!sbad[k])
                    same = memcmp(sbuf + j, dbuf + j, (size_t)sl) == 0;
            }
            for (uint64_t j = i; !rc && j < i + len; j += 512) {
                if (!sbad[j / 512] || (same && dbad[j / 512]))
                    continue;
                if (!o->salvage) /* the read again, for its error */
                    rc = qcow2_image_read(src, sbuf + j, (size_t)qcow2__min(512, i + len - j),
                                          off + j);
                else if (o->read_error)
                    o->read_error(off + j, QCOW2_EIO, o->payload);
            }
            if (rc || same)
                continue;
            if (all_zero(sbuf + i, len))
                rc = qcow2_image_write_zeroes(dst, off + i, len, 0);
            else if (o->compress)
                rc = qcow2_image_write_compressed(dst, sbuf + i, (size_t)len, off + i);
            else
                rc = qcow2_image_write(dst, sbuf + i, (size_t)len, off + i);
        }
        if (rc)
            break;
        off += n;
        if (o->progress)
            o->progress(off, src->size, o->payload);
    }
    qcow2__free(sbad);
    return rc;
}

/*
 * Convert into an existing qcow2 image (qemu-img convert -n): it is not new,
 * so zero ranges of src are zeroed in it instead of left alone.
 */
static int convert_qcow2_into(qcow2_image *src, const char *dst_path, const qcow2_convert_opts *o)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *dst = NULL;
    struct conv_progress cp;
    uint8_t *buf = NULL;
    uint64_t off = 0, pf_end = 0;
    int rc;

    if (o->compress || o->backing)
        return qcow2__err(QCOW2_EINVAL, 0, dst_path,
                          "compression and a new backing file need a new image");
    oo.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_FLUSH;
    oo.format = QCOW2_FORMAT_QCOW2;
    rc = qcow2_image_open(&dst, dst_path, &oo);
    if (rc)
        return rc;
    if (dst->size < src->size) {
        rc = qcow2__err(QCOW2_EINVAL, 0, dst_path, "output file is smaller than input file");
        goto out;
    }
    rc = conv_progress_init(&cp, src, o);
    if (rc)
        goto out;
    buf = qcow2__malloc(OPS_CHUNK);
    if (!buf) {
        rc = qcow2__nomem();
        goto out;
    }
    while (off < src->size) {
        qcow2_extent e;

        qcow2__prefetch_ahead(src, NULL, off, &pf_end);
        rc = qcow2_image_block_status(src, NULL, off, qcow2__min(src->size - off, OPS_CHUNK), &e);
        if (rc)
            goto out;
        if (ext_is_zero(&e) && o->min_sparse) {
            rc = qcow2_image_write_zeroes(dst, off, e.length, QCOW2_ZERO_MAY_UNMAP);
        } else {
            rc = conv_read(src, buf, e.length, off, ext_is_zero(&e), o);
            if (!rc)
                rc = qcow2_image_write(dst, buf, (size_t)e.length, off);
        }
        if (rc)
            goto out;
        off += e.length;
        conv_progress_to(&cp, off);
    }
    conv_progress_end(&cp);
    rc = qcow2_image_flush(dst);
out:
    qcow2__free(buf);
    qcow2_image_close(dst);
    return rc;
}

static int convert_qcow2(qcow2_image *src, const char *dst_path, const qcow2_convert_opts *o)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *dst = NULL;
    struct conv_progress cp;
    uint8_t *buf = NULL;
    uint64_t off = 0, chunk, pf_end = 0;
    int rc;

    if (o->create)
        co = *o->create;
    co.format = QCOW2_FORMAT_QCOW2;
    co.size = src->size;
    co.backing_file = o->backing;
    co.backing_format = o->backing_format;
    if (o->backing && !o->backing_format)
        return qcow2__err(QCOW2_EINVAL, 0, dst_path, "a backing file needs its format (-F)");
    if (o->no_create)
        return convert_qcow2_into(src, dst_path, o);
    /* Replace an existing target, as qemu-img convert does. */
    if (unlink(dst_path) < 0 && errno != ENOENT)
        return qcow2__err(QCOW2_EIO, errno, dst_path, "cannot replace: %s", strerror(errno));
    rc = qcow2_image_create(dst_path, &co);
    if (rc)
        return rc;
    /* Like qemu-img convert: the new image is not flushed (cache=unsafe). */
    oo.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_FLUSH | (o->backing ? 0 : QCOW2_OPEN_NO_BACKING);
    oo.format = QCOW2_FORMAT_QCOW2;
    rc = qcow2_image_open(&dst, dst_path, &oo);
    if (rc)
        return rc;
    chunk = qcow2__max(OPS_CHUNK, dst->cluster_size);
    if (!o->backing) {
        rc = conv_progress_init(&cp, src, o);
        if (rc)
            goto out;
    }
    buf = qcow2__malloc((size_t)chunk * (o->backing ? 2 : 1));
    if (!buf) {
        rc = qcow2__nomem();
        goto out;
    }
    if (o->backing) {
        rc = convert_over_backing(src, dst, o, buf, buf + chunk, chunk);
        if (!rc)
            rc = qcow2_image_flush(dst);
        goto out;
    }
    while (off < src->size) {
        qcow2_extent e;
        uint64_t n;

        qcow2__prefetch_ahead(src, NULL, off, &pf_end);
        rc = qcow2_image_block_status(src, NULL, off, qcow2__min(src->size - off, chunk), &e);
        if (rc)
            goto out;
        n = e.length;
        /* -S 0 (min_sparse 0) allocates every cluster, zero ones too, as qemu-img. */
        if (!ext_is_zero(&e) || (!o->min_sparse && !o->compress)) {
            /* Whole target clusters, so compressed writes and COW see full clusters. */
            uint64_t end = qcow2__min(src->size, qcow2__align_up(off + n, dst->cluster_size));
            uint64_t start = off & ~(dst->cluster_size - 1);
            n = qcow2__min(end - start, chunk);
            rc = conv_read(src, buf, n, start, false, o);
            if (!rc)
                rc = write_qcow2_run(dst, buf, n, start, o);
            if (rc)
                goto out;
            n -= off - start;
        }
        off += n;
        conv_progress_to(&cp, off);
    }
    conv_progress_end(&cp);
    rc = qcow2_image_flush(dst);
out:
    qcow2__free(buf);
    qcow2_image_close(dst);
    return rc;
}

/*
 * Share the raw file at the bottom of src's chain into the new raw target
 * dst in one call (reflink), where the file system can: its bytes lie at
 * their guest offsets, so the target then holds the base, holes as holes,
 * and the convert only has to lay what the layers above hold over it
 * (qcow2_image_convert). Returns the bytes shared from offset 0 (a multiple
 * of QCOW2__CLONE_ALIGN), 0 when nothing was (no raw bottom, a file system
 * that cannot share), or an error.
 */
static int64_t share_raw_bottom(qcow2_image *src, qcow2_io *dst, const char *dst_path)
{
    qcow2_image *bottom = src;
    uint64_t len;
    int rc;

    while (bottom->backing)
        bottom = bottom->backing;
    if (bottom == src || bottom->fmt != QCOW2_FORMAT_RAW)
        return 0;
    len = qcow2__min(qcow2__min(src->size, bottom->size), bottom->file_size);
    len &= ~(uint64_t)(QCOW2__CLONE_ALIGN - 1);
    if (!len || len > (uint64_t)INT64_MAX)
        return 0;
    rc = qcow2__io_clone(dst, dst_path, 0, bottom->io, 0, len);
    return rc < 0 ? rc : rc > 0 ? (int64_t)len : 0;
}

/*
 * The target must not be a file the convert reads: replacing or writing it
 * would destroy the source under the copy (qemu-img is stopped by its image
 * locks; these are not taken with -U or QCOW2_OPEN_NO_LOCK). Compared by
 * device and inode, after following links.
 */
static int refuse_dst_in_chain(qcow2_image *src, const char *dst_path)
{
    for (qcow2_image *l = src; l; l = l->backing) {
        if (qcow2__io_is_path(l->io, dst_path) == 1)
            return qcow2__err(QCOW2_EINVAL, 0, dst_path,
                              "it is %s of the image being converted: writing it would destroy "
                              "the source",
                              l == src ? "the file" : "a backing file");
    }
    return 0;
}

int qcow2_image_convert(qcow2_image *src, const char *dst_path, const qcow2_convert_opts *opts)
{
    qcow2_convert_opts o = QCOW2_CONVERT_OPTS_INIT;
    struct conv_progress cp;
    qcow2_io *dst = NULL;
    uint8_t *buf = NULL;
    uint64_t off = 0, pf_end = 0, base_end = 0;
    qcow2_image *bottom = NULL;
    int sharing = -1; /* whether runs are shared into dst: -1 not known yet */
    int rc;

    if (opts)
        o = *opts;
    rc = refuse_dst_in_chain(src, dst_path);
    if (rc)
        return rc;
    if (o.format == QCOW2_FORMAT_QCOW2)
        return convert_qcow2(src, dst_path, &o);
    if (o.format != QCOW2_FORMAT_RAW)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, dst_path, "unknown output format %d",
                          (int)o.format);
    if (o.compress)
        return qcow2__err(QCOW2_EINVAL, 0, dst_path, "raw output cannot be compressed");
    if (o.no_create) {
        uint64_t size;

        if (o.backing)
            return qcow2__err(QCOW2_EINVAL, 0, dst_path, "raw output has no backing file");
        rc = qcow2_io_posix_open(&dst, dst_path, QCOW2_IO_RDWR);
        if (rc < 0)
            return qcow2__io_error(rc, dst_path, "cannot open");
        rc = qcow2__io_size(dst, dst_path, &size);
        if (!rc && size < src->size)
            rc = qcow2__err(QCOW2_EINVAL, 0, dst_path, "output file is smaller than input file");
    } else {
        rc = qcow2_io_posix_open(&dst, dst_path, QCOW2_IO_RDWR | QCOW2_IO_CREATE | QCOW2_IO_TRUNC);
        if (rc < 0)
            return qcow2__io_error(rc, dst_path, "cannot create");
        rc = qcow2__io_truncate(dst, dst_path, src->size);
    }
    if (rc)
        goto out;
    rc = conv_progress_init(&cp, src, &o);
    if (rc)
        goto out;
    buf = qcow2__malloc(OPS_CHUNK);
    if (!buf) {
        rc = qcow2__nomem();
        goto out;
    }
    /*
     * A new sparse target over a raw base: share the whole base first (one
     * call, where a run at a time took one per piece between the layers'
     * clusters), then below only what the layers above change. Not over an
     * old target (-n) nor with -S 0, which want every byte written.
     */
    if (!o.no_create && o.min_sparse) {
        int64_t shared_len = share_raw_bottom(src, dst, dst_path);
        if (shared_len < 0) {
            rc = (int)shared_len;
            goto out;
        }
        if (shared_len > 0) {
            base_end = (uint64_t)shared_len;
            sharing = 1;
            for (bottom = src; bottom->backing;)
                bottom = bottom->backing;
        }
    }
    while (off < src->size) {
        qcow2_extent e;
        bool shared, over_base;

        /* Reading ahead is for copying: not while the data is being shared (or may be). */
        if (sharing == 0)
            qcow2__prefetch_ahead(src, NULL, off, &pf_end);
        rc = qcow2_image_block_status(src, NULL, off, qcow2__min(src->size - off, OPS_CHUNK), &e);
        if (rc)
            goto out;
        over_base = off < base_end;
        if (over_base) {
            /* Shared with the base already: what the base itself decides is in place. */
            e.length = qcow2__min(e.length, base_end - off);
            if (e.layer == bottom) {
                off += e.length;
                conv_progress_to(&cp, off);
                continue;
            }
        }
        shared = false;
        if ((e.flags & QCOW2_EXT_DATA) && (e.flags & QCOW2_EXT_OFFSET_VALID) &&
            !(e.flags & QCOW2_EXT_COMPRESSED)) {
            /* Share the blocks where the file system can (reflink); else copy below. */
            rc = qcow2__io_clone(dst, dst_path, off, e.layer->io, e.host_off, e.length);
            if (rc < 0)
                goto out;
            shared = rc > 0;
            if (sharing < 0) /* the first try tells whether this file system shares */
                sharing = shared;
            rc = 0;
        } else if (sharing < 0 && !ext_is_zero(&e)) {
            sharing = 0; /* data that cannot be shared (compressed): copy, reading ahead */
        }
        if (!shared && (o.no_create || over_base) && ext_is_zero(&e) && o.min_sparse) {
            /* The target (old, or the shared base) holds other data: zero it (a hole if it can). */
            rc = qcow2__io_punch(dst, dst_path, off, e.length);
            if (rc)
                goto out;
        } else if (!shared && (!ext_is_zero(&e) || !o.min_sparse)) {
            rc = conv_read(src, buf, e.length, off, ext_is_zero(&e), &o);
            if (rc)
                goto out;
            /* Holes are left only where the target holds nothing: else it is written whole. */
            rc = write_sparse(dst, dst_path, buf, e.length, off,
                              o.no_create || over_base ? 0 : o.min_sparse);
            if (rc)
                goto out;
        }
        off += e.length;
        conv_progress_to(&cp, off);
    }
    conv_progress_end(&cp);
    /* Like qemu-img convert, no final flush: the page cache writes it out. */
out:
    qcow2__free(buf);
    qcow2_io_close(dst);
    return rc;
}

/* Refcount table and blocks for `clusters` clusters, themselves included. */
static uint64_t refcount_meta_bytes(uint64_t clusters, uint64_t cs, unsigned refcount_bits)
{
    uint64_t per_block = cs * 8 / refcount_bits, per_table_cluster = cs / 8;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = (clusters + table + blocks + per_block - 1) / per_block;
        table = (blocks + per_table_cluster - 1) / per_table_cluster;
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cs;
}

/* Bytes of a fully preallocated qcow2 image of virtual size `size`. */
static uint64_t prealloc_bytes(uint64_t size, uint64_t cs, unsigned refcount_bits, bool extl2)
{
    uint64_t l2e = extl2 ? 16 : 8;
    uint64_t aligned = qcow2__align_up(size, cs);
    uint64_t meta = cs; /* header */
    uint64_t nl2e = qcow2__align_up(aligned / cs, cs / l2e);
    uint64_t nl1e = qcow2__align_up(nl2e * l2e / cs, cs / 8);

    meta += nl2e * l2e + nl1e * 8;
    meta += refcount_meta_bytes((meta + aligned) / cs, cs, refcount_bits);
    return meta + aligned;
}

int qcow2_measure(qcow2_image *src, uint64_t size, const qcow2_create_opts *opts,
                  qcow2_measure_result *out)
{
    qcow2_create_opts o = QCOW2_CREATE_OPTS_INIT;
    uint64_t cs, required = 0;
    int rc;

    if (opts)
        o = *opts;
    memset(out, 0, sizeof(*out));
    if (src)
        size = src->size;
    size = qcow2__align_up(size, 512);
    if (o.format == QCOW2_FORMAT_RAW) {
        out->required = out->fully_allocated = size;
        return 0;
    }
    cs = o.cluster_size;
    /* qemu-img's words (scripts compare them). */
    if (!cs || (cs & (cs - 1)) || cs < 512 || cs > (2u << 20))
        return qcow2__err(QCOW2_EINVAL, 0, NULL,
                          "Cluster size must be a power of two between 512 and 2048k");
    if (!o.refcount_bits || (o.refcount_bits & (o.refcount_bits - 1)) || o.refcount_bits > 64)
        return qcow2__err(QCOW2_EINVAL, 0, NULL,
                          "Refcount width must be a power of two and may not exceed 64 bits");
    if (src) {
        for (uint64_t off = 0; off < src->size;) {
            qcow2_extent e;
            uint64_t n;

            rc = qcow2_image_block_status(src, NULL, off, src->size - off, &e);
            if (rc)
                return rc;
            n = e.length;
            if (!(e.flags & QCOW2_EXT_ZERO) && (e.flags & QCOW2_EXT_DATA) &&
                (e.flags & QCOW2_EXT_PRESENT)) {
                /* Whole clusters of the new image hold this data (as qemu counts). */
                n = qcow2__align_up(off + n, cs) - off;
                required += off % cs + n;
            }
            off += n;
        }
        /* Bitmaps can only be carried into a v3 image. */
        out->has_bitmaps = src->fmt == QCOW2_FORMAT_QCOW2 && o.qcow2_version >= 3;
    }
    {
        uint64_t per_l1 = cs * (cs / (o.extended_l2 ? 16 : 8));
        if ((size / per_l1 + (size % per_l1 != 0)) * 8 > QCOW2_MAX_L1_BYTES)
            return qcow2__err(QCOW2_EINVAL, 0, NULL,
                              "the image size is too large (try using a larger cluster size)");
    }
    out->fully_allocated = prealloc_bytes(size, cs, o.refcount_bits, o.extended_l2);
    /* falloc and full preallocation reserve everything up front. */
    if (o.preallocation == QCOW2_PREALLOC_FALLOC || o.preallocation == QCOW2_PREALLOC_FULL)
        out->required = out->fully_allocated;
    else
        out->required = out->fully_allocated - qcow2__align_up(size, cs) + required;
    return 0;
}

#define FP_BLOCK 65536ull /* fingerprint granularity: a block of zeroes is left out */

/* Whether p[0..n) are all zero (n >= 1). */
static bool bytes_zero(const uint8_t *p, size_t n)
{
    return p[0] == 0 && memcmp(p, p + 1, n - 1) == 0;
}

/* Feed block [b, b + n) of the file (its bytes in buf) to h, from byte `from` of the file on:
 * the offset and the bytes, unless those bytes are all zero. */
static void fp_block(qcow2__hash *h, const uint8_t *buf, uint64_t b, size_t n, uint64_t from)
{
    uint8_t off[8];
    size_t skip = from > b ? (size_t)(from - b) : 0;

    if (!h || skip >= n || bytes_zero(buf + skip, n - skip))
        return;
    qcow2__put_be64(off, b + skip);
    qcow2__hash_update(h, off, 8);
    qcow2__hash_update(h, buf + skip, n - skip);
}

/*
 * The fingerprints of path from byte 0 (into all, unless NULL) and from byte
 * `from` (into tail, unless NULL), in one pass over the file: both are of the
 * content alone (blocks of zeroes, holes or written, are left out alike), so
 * a block read once serves both.
 */
static int fingerprints(const char *path, uint64_t from, uint8_t all[16], uint8_t tail[16])
{
    qcow2_io *io = NULL;
    qcow2__hash *ha = NULL, *ht = NULL;
    uint8_t *buf = NULL, hdr[8];
    uint64_t size, off = all ? 0 : from;
    int rc;

    rc = qcow2_io_posix_open(&io, path, 0);
    if (rc < 0)
        return qcow2__io_error(rc, path, "cannot open");
    rc = qcow2__io_size(io, path, &size);
    if (!rc && all)
        rc = qcow2__hash_new(&ha);
    if (!rc && tail)
        rc = qcow2__hash_new(&ht);
    if (!rc && !(buf = qcow2__malloc(OPS_CHUNK)))
        rc = qcow2__nomem();
    while (!rc && off < size) {
        uint64_t run, next = 0;
        bool hole;

        rc = qcow2__io_extent(io, path, off, size - off, &run, &hole);
        if (rc)
            break;
        for (uint64_t b = qcow2__max(off & ~(FP_BLOCK - 1), next); !hole && !rc && b < off + run;
             b += FP_BLOCK) {
            uint64_t s0 = all ? b : qcow2__max(b, from);
            size_t n = (size_t)(qcow2__min(b + FP_BLOCK, size) - s0);
            rc = qcow2__io_read(io, path, buf, n, s0);
            if (!rc) {
                fp_block(ha, buf, s0, n, 0);
                fp_block(ht, buf, s0, n, from);
            }
            next = b + FP_BLOCK;
        }
        off = hole ? off + run : qcow2__max(off + run, qcow2__min(next, size));
    }
    qcow2__put_be64(hdr, size);
    if (!rc && ha) {
        qcow2__hash_update(ha, hdr, 8);
        qcow2__hash_final(ha, all);
    }
    if (!rc && ht) {
        qcow2__hash_update(ht, hdr, 8);
        qcow2__hash_final(ht, tail);
    }
    qcow2__free(buf);
    qcow2__hash_free(ha);
    qcow2__hash_free(ht);
    qcow2_io_close(io);
    return rc;
}

int qcow2_file_fingerprint(const char *path, uint8_t out[16])
{
    return out ? fingerprints(path, 0, out, NULL)
               : qcow2__err(QCOW2_EINVAL, 0, path, "qcow2_file_fingerprint: missing argument");
}

int qcow2_file_fingerprint_from(const char *path, uint64_t from, uint8_t out[16])
{
    return out ? fingerprints(path, from, NULL, out)
               : qcow2__err(QCOW2_EINVAL, 0, path,
                            "qcow2_file_fingerprint_from: missing argument");
}

int qcow2_file_fingerprints(const char *path, uint64_t from, uint8_t all[16], uint8_t tail[16])
{
    return all && tail ? fingerprints(path, from, all, tail)
                       : qcow2__err(QCOW2_EINVAL, 0, path,
                                    "qcow2_file_fingerprints: missing argument");
}
