/*
 * Layer operations on a backing chain: commit (into a raw or qcow2 base),
 * rebase (safe and unsafe), stream, and make-empty. These are what the
 * snapshot tree runs on its layers. They use the read and write paths
 * (read.c, write.c) and image.c's reopen, and keep one rule: the layer that
 * receives data holds it durably before any link or allocation elsewhere
 * changes, so a crash at any point leaves every guest view recoverable.
 */
#include <inttypes.h>

#include "qcow2_int.h"

#define LAYER_CHUNK (4u << 20) /* bytes copied per step */
#define CMP_GRAIN (64u << 10)  /* granularity of rebase's old/new comparison */

/* Depth of base below top (1 = top's backing), or 0 when base is not in the chain. */
static unsigned chain_depth_of(const qcow2_image *top, const qcow2_image *base)
{
    unsigned d = 0;

    for (const qcow2_image *l = top; l; l = l->backing, d++) {
        if (l == base)
            return d;
    }
    return 0;
}

/* The layer directly above base in top's chain. */
static qcow2_image *layer_above(qcow2_image *top, const qcow2_image *base)
{
    for (qcow2_image *l = top; l; l = l->backing) {
        if (l->backing == base)
            return l;
    }
    return NULL;
}

/* Set img's backing link (name stored as given) and format, and rewrite the header. */
static int set_backing_link(qcow2_image *img, const char *name, const char *fmt)
{
    char *n = NULL, *f = NULL, *path = NULL, *old_n, *old_f, *old_p;
    int rc;

    if (name) {
        n = qcow2__strdup(name);
        f = fmt ? qcow2__strdup(fmt) : NULL;
        path = qcow2__resolve_backing(img->name, name);
        if (!n || (fmt && !f) || !path) {
            qcow2__free(n);
            qcow2__free(f);
            qcow2__free(path);
            return qcow2__nomem();
        }
    }
    old_n = img->backing_name;
    old_f = img->backing_fmt;
    old_p = img->backing_path;
    img->backing_name = n;
    img->backing_fmt = f;
    img->backing_path = path;
    rc = qcow2__header_write(img);
    if (rc && img->state != QCOW2__FATAL) {
        /* Refused before writing (or one sector that did not land): the old link stands. */
        img->backing_name = old_n;
        img->backing_fmt = old_f;
        img->backing_path = old_p;
        old_n = n;
        old_f = f;
        old_p = path;
    }
    qcow2__free(old_n);
    qcow2__free(old_f);
    qcow2__free(old_p);
    return rc;
}

/* Renumber depths after the chain below img changed. */
static void renumber(qcow2_image *img)
{
    for (qcow2_image *l = img; l->backing; l = l->backing)
        l->backing->depth = l->depth + 1;
}

/*
 * Make base img's backing (base is in img's chain, or NULL for none): the
 * header link first, then the in-memory chain; the layers between are
 * closed.
 */
static int relink(qcow2_image *img, qcow2_image *base)
{
    qcow2_image *above = base ? layer_above(img, base) : NULL, *old;
    char *name = NULL;
    int rc;

    if (above == img)
        return 0;
    if (base) {
        name = qcow2__relative_name(img->name, base->name);
        if (!name)
            return qcow2__nomem();
    }
    rc = set_backing_link(img, name, base ? qcow2_format_name(base->fmt) : NULL);
    qcow2__free(name);
    if (rc)
        return qcow2__fatal(img, rc);
    old = img->backing;
    if (above)
        above->backing = NULL; /* detach base from the layers that go */
    img->backing = base;
    qcow2__pool_bump(img->pool); /* the chain changed shape: its maps are stale */
    qcow2__image_free(old);
    renumber(img);
    return 0;
}

int qcow2_image_make_empty(qcow2_image *img)
{
    int rc = qcow2__check_writable(img);

    if (rc)
        return rc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name, "only qcow2 images can be emptied");
    if (img->nb_snaps)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "cannot empty an image that has internal snapshots");
    for (uint64_t i = 0; i < img->hdr.l1_size; i++) {
        uint64_t l2_off = img->l1[i] & QCOW2_L1E_OFFSET_MASK;
        const uint8_t *t;

        if (!l2_off)
            continue;
        rc = qcow2__check_l2_offset(img, i, l2_off);
        if (!rc)
            rc = qcow2__l2_load(img, l2_off, &t);
        for (uint64_t j = 0; !rc && j < img->l2_entries; j++) {
            uint64_t e = qcow2__be64(t + j * img->l2e_bytes);
            if (e & QCOW2_OFLAG_COMPRESSED) {
                uint64_t off, len;
                qcow2__compressed_range(img, e, &off, &len);
                rc = qcow2__free_later(img, off, len);
            } else if (e & QCOW2_L2E_OFFSET_MASK) {
                rc = qcow2__free_later(img, e & QCOW2_L2E_OFFSET_MASK, img->cluster_size);
            }
        }
        if (!rc)
            rc = qcow2__free_later(img, l2_off, img->cluster_size);
        if (rc)
            return qcow2__fatal(img, rc);
        /* The table goes: never write it back. */
        qcow2__cache_drop(&img->l2c, l2_off);
        img->l1[i] = 0;
        img->l1_dirty = true;
        qcow2__mapping_changed(img);
    }
    /* L1 first, then the frees (qcow2__metadata_flush orders them). */
    return qcow2__metadata_flush(img);
}

/* Copy one run that top's chain holds above base into base. */
static int commit_run(qcow2_image *top, qcow2_image *base, const qcow2_extent *e, uint8_t *buf)
{
    uint64_t off = e->start, len = e->length;
    int rc;

    if (e->flags & QCOW2_EXT_ZERO)
        return qcow2_image_write_zeroes(base, off, len, QCOW2_ZERO_MAY_UNMAP);
    /*
     * Data that lies as it is in a layer's file: on a file system that
     * shares blocks (XFS with reflink, btrfs), the base takes the same
     * blocks instead of a copy. Either file's later writes are its own (the
     * file system copies on write); unaligned runs are copied.
     */
    if ((e->flags & QCOW2_EXT_OFFSET_VALID) && (e->flags & QCOW2_EXT_DATA) &&
        !(e->flags & QCOW2_EXT_COMPRESSED)) {
        if (base->fmt == QCOW2_FORMAT_RAW) {
            qcow2__raw_changed(base);
            rc = qcow2__io_clone(base->io, base->name, off, e->layer->io, e->host_off, len);
        } else {
            rc = qcow2__write_shared(base, off, len, e->layer->io, e->layer->name, e->host_off);
        }
        if (rc)
            return rc < 0 ? rc : 0;
    }
    /* Raw into raw-like: let the kernel copy (copy_file_range) when it can. */
    if (base->fmt == QCOW2_FORMAT_RAW && (e->flags & QCOW2_EXT_OFFSET_VALID) &&
        base->io->ops->copy_from) {
        qcow2__raw_changed(base); /* holes it charted may now hold data */
        rc = base->io->ops->copy_from(base->io, off, e->layer->io, e->host_off, (size_t)len);
        if (rc == 0)
            return 0;
    }
    rc = qcow2_image_read(top, buf, (size_t)len, off);
    if (rc)
        return rc;
    return qcow2_image_write(base, buf, (size_t)len, off);
}

#define COMMIT_BATCH 16384u /* runs gathered, then copied in file order */

/* File order: by layer, then by host offset (runs without one keep guest order). */
static int cmp_runs(const void *pa, const void *pb)
{
    const qcow2_extent *a = pa, *b = pb;
    uintptr_t la = (uintptr_t)a->layer, lb = (uintptr_t)b->layer;
    uint64_t ka = (a->flags & QCOW2_EXT_OFFSET_VALID) ? a->host_off : a->start;
    uint64_t kb = (b->flags & QCOW2_EXT_OFFSET_VALID) ? b->host_off : b->start;

    if (la != lb)
        return la < lb ? -1 : 1;
    return ka < kb ? -1 : ka > kb;
}

int qcow2_image_commit(qcow2_image *top, const qcow2_commit_opts *opts)
{
    qcow2_commit_opts o = QCOW2_COMMIT_OPTS_INIT;
    qcow2_image *base;
    qcow2_extent *runs = NULL;
    uint8_t *buf = NULL;
    uint64_t off = 0;
    int rc;

    if (opts)
        o = *opts;
    base = (qcow2_image *)(uintptr_t)(o.base ? o.base : top->backing);
    if (!base)
        return qcow2__err(QCOW2_EINVAL, 0, top->name, "image has no backing file to commit into");
    if (!chain_depth_of(top, base))
        return qcow2__err(QCOW2_EINVAL, 0, top->name, "'%s' is not in the image's backing chain",
                          base->name);
    if (!o.keep_top) {
        rc = qcow2__reopen(top, true);
        if (rc)
            return rc;
        if (top->fmt == QCOW2_FORMAT_QCOW2 && top->nb_snaps)
            return qcow2__err(QCOW2_EUNSUPPORTED, 0, top->name,
                              "cannot empty an image that has internal snapshots (use -d)");
    }
    rc = qcow2__reopen(base, true);
    if (rc)
        return rc;
    if (base->size < top->size) {
        rc = qcow2_image_resize(base, top->size, false);
        if (rc)
            goto out;
    }
    buf = qcow2__malloc(LAYER_CHUNK);
    runs = qcow2__malloc(COMMIT_BATCH * sizeof(*runs));
    if (!buf || !runs) {
        rc = qcow2__nomem();
        goto out;
    }
    /*
     * Gather a batch of the runs above base, then copy them in file order:
     * an overlay written at random places is then read front to back, which
     * the kernel's readahead serves at disk speed. Where the base receives
     * them does not matter: nothing is durable before the final flush.
     */
    while (off < top->size) {
        size_t n = 0;

        while (off < top->size && n < COMMIT_BATCH) {
            rc = qcow2_image_block_status(top, base, off,
                                          qcow2__min(top->size - off, LAYER_CHUNK), &runs[n]);
            if (rc)
                goto out;
            off += runs[n].length;
            if (runs[n].flags & QCOW2_EXT_PRESENT)
                n++;
        }
        qsort(runs, n, sizeof(*runs), cmp_runs);
        for (size_t i = 0; i < n; i++) {
            rc = commit_run(top, base, &runs[i], buf);
            if (rc)
                goto out;
        }
        if (o.progress)
            o.progress(off, top->size, o.payload);
    }
    /* Base holds everything durably before any other file changes. */
    rc = qcow2_image_flush(base);
    if (rc)
        goto out;
    if (!o.keep_top) {
        rc = relink(top, base);
        if (!rc && top->fmt == QCOW2_FORMAT_QCOW2)
            rc = qcow2_image_make_empty(top);
    }
out:
    qcow2__free(runs);
    qcow2__free(buf);
    {
        int rc2 = qcow2__reopen(base, false);
        if (!rc)
            rc = rc2;
    }
    return rc;
}

/* Read [off, off+len) of a chain (may be NULL = zeroes), zeroes past its end. */
static int read_chain(qcow2_image *chain, uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t part = chain && off < chain->size ? qcow2__min(len, chain->size - off) : 0;
    int rc = part ? qcow2_image_read(chain, buf, (size_t)part, off) : 0;

    if (!rc && part < len)
        memset(buf + part, 0, (size_t)(len - part));
    return rc;
}

/*
 * Safe rebase's copy: wherever img does not allocate and the old and new
 * chains differ, write the old content into img.
 */
static int rebase_copy(qcow2_image *img, qcow2_image *new_chain, qcow2_progress_fn progress,
                       void *payload)
{
    uint8_t *a = qcow2__malloc(CMP_GRAIN), *b = qcow2__malloc(CMP_GRAIN);
    uint64_t off = 0;
    int rc = 0;

    if (!a || !b) {
        rc = qcow2__nomem();
        goto out;
    }
    while (off < img->size) {
        struct qcow2__lrun r;
        uint64_t n = qcow2__min(img->size - off, CMP_GRAIN - (off % CMP_GRAIN));

        rc = qcow2__layer_extent(img, off, n, &r);
        if (rc)
            goto out;
        n = r.len;
        if (r.kind == QCOW2__RUN_UNALLOC) {
            rc = read_chain(img->backing, a, n, off);
            if (!rc)
                rc = read_chain(new_chain, b, n, off);
            if (!rc && memcmp(a, b, (size_t)n) != 0)
                rc = qcow2_image_write(img, a, (size_t)n, off);
            if (rc)
                goto out;
        }
        off += n;
        if (progress)
            progress(off, img->size, payload);
    }
    rc = qcow2_image_flush(img);
out:
    qcow2__free(a);
    qcow2__free(b);
    return rc;
}

int qcow2_image_rebase(qcow2_image *img, const char *backing, const char *backing_format,
                       bool unsafe, qcow2_progress_fn progress, void *payload)
{
    qcow2_image *new_chain = NULL, *old;
    char *self = NULL;
    int rc = qcow2__check_writable(img);

    if (rc)
        return rc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name, "only qcow2 images have a backing file");
    if (backing && !backing[0])
        backing = NULL;
    if (backing) {
        qcow2_open_opts oo = img->opts;
        char *path = qcow2__resolve_backing(img->name, backing);

        if (!path)
            return qcow2__nomem();
        oo.flags &= ~(unsigned)QCOW2_OPEN_RDWR;
        oo.format = qcow2_format_from_name(backing_format);
        if (backing_format && oo.format == QCOW2_FORMAT_AUTO) {
            qcow2__free(path);
            return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                              "backing format '%s' is not supported", backing_format);
        }
        rc = qcow2_image_open(&new_chain, path, &oo);
        qcow2__free(path);
        if (rc && !unsafe)
            return rc;
        /* Unsafe mode only rewrites the link (as qemu-img rebase -u): the new file need
         * not be there; until it is, img reads as if it had no backing file. */
        if (rc)
            new_chain = NULL;
        rc = 0;
        /* The new chain must not lead back to img. */
        self = qcow2__canonical_name(img);
        for (qcow2_image *l = new_chain; l && self; l = l->backing) {
            char *c = qcow2__canonical_name(l);
            bool same = c && strcmp(c, self) == 0;
            qcow2__free(c);
            if (same) {
                rc = qcow2__err(QCOW2_EINVAL, 0, img->name,
                                "rebasing onto '%s' would make a backing loop", backing);
                goto out;
            }
        }
    }
    if (!unsafe) {
        rc = rebase_copy(img, new_chain, progress, payload);
        if (rc)
            goto out;
    }
    rc = set_backing_link(img, backing,
                          backing ? (backing_format  ? backing_format
                                     : new_chain ? qcow2_format_name(new_chain->fmt)
                                                 : NULL)
                                  : NULL);
    if (rc) {
        rc = qcow2__fatal(img, rc);
        goto out;
    }
    old = img->backing;
    img->backing = new_chain;
    qcow2__pool_bump(img->pool); /* the chain changed shape: its maps are stale */
    new_chain = old; /* freed below */
    if (img->backing)
        renumber(img);
out:
    qcow2__free(self);
    qcow2__image_free(new_chain);
    return rc;
}

int qcow2_image_stream(qcow2_image *img, const qcow2_image *base_c, qcow2_progress_fn progress,
                       void *payload)
{
    qcow2_image *base = (qcow2_image *)(uintptr_t)base_c;
    uint8_t *buf = NULL;
    uint64_t off = 0;
    int rc = qcow2__check_writable(img);

    if (rc)
        return rc;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name, "only qcow2 images can be streamed into");
    if (base && chain_depth_of(img, base) < 1)
        return qcow2__err(QCOW2_EINVAL, 0, img->name, "'%s' is not in the image's backing chain",
                          base->name);
    if (base == img->backing)
        return 0; /* nothing between img and base */
    buf = qcow2__malloc(LAYER_CHUNK);
    if (!buf)
        return qcow2__nomem();
    while (off < img->size) {
        struct qcow2__lrun r;

        rc = qcow2__layer_extent(img, off, qcow2__min(img->size - off, LAYER_CHUNK), &r);
        if (rc)
            goto out;
        if (r.kind == QCOW2__RUN_UNALLOC && img->backing && off < img->backing->size) {
            uint64_t end = off + qcow2__min(r.len, img->backing->size - off), pos = off;
            while (pos < end) {
                qcow2_extent e;
                rc = qcow2_image_block_status(img->backing, base, pos, end - pos, &e);
                if (rc)
                    goto out;
                if (e.flags & QCOW2_EXT_PRESENT) {
                    if (e.flags & QCOW2_EXT_ZERO) {
                        rc = qcow2_image_write_zeroes(img, pos, e.length, 0);
                    } else {
                        rc = qcow2_image_read(img->backing, buf, (size_t)e.length, pos);
                        if (!rc)
                            rc = qcow2_image_write(img, buf, (size_t)e.length, pos);
                    }
                    if (rc)
                        goto out;
                }
                pos += e.length;
            }
        }
        off += r.len;
        if (progress)
            progress(off, img->size, payload);
    }
    /* img holds everything durably before its link changes. */
    rc = qcow2_image_flush(img);
    if (!rc)
        rc = relink(img, base);
out:
    qcow2__free(buf);
    return rc;
}
