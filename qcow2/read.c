/*
 * Reading guest data and allocation status across a backing chain. Each
 * layer answers for the ranges it allocates (cluster.c); unallocated ranges
 * fall through to the backing image, and read as zeroes past the end of a
 * shorter backing image or where there is none.
 */
#include <inttypes.h>

#include "qcow2_int.h"

/*
 * A raw layer's runs of data and holes. The first time a read needs one it
 * does not know, the whole file is charted (SEEK_DATA/SEEK_HOLE, run by run)
 * if it has at most RAW_MAP_MAX runs: a raw base under a deep chain is then
 * read at random without two lseek calls per read. A file with more runs
 * (or a failure while charting) keeps asking per read, remembering the last
 * run found. Any write to the layer forgets the chart (start_write).
 */
#define RAW_MAP_MAX 1024u

static void raw_chart(qcow2_image *img)
{
    struct qcow2__raw_run *runs = qcow2__malloc(RAW_MAP_MAX * sizeof(*runs));
    struct qcow2__err_saved saved;
    uint64_t pos = 0;
    unsigned n = 0;

    img->raw_chart = QCOW2__CHART_NONE;
    if (!runs)
        return;
    qcow2__err_save(&saved);
    while (pos < img->file_size && n < RAW_MAP_MAX) {
        uint64_t len;
        bool hole;
        if (qcow2__io_extent(img->io, img->name, pos, img->file_size - pos, &len, &hole) || !len)
            break;
        runs[n].off = pos;
        runs[n].len = len;
        runs[n].hole = hole;
        n++;
        pos += len;
    }
    if (pos < img->file_size) {
        qcow2__err_restore(&saved); /* the per-read path meets (and reports) it again */
        qcow2__free(runs);
        return;
    }
    qcow2__free(img->raw_runs);
    img->raw_runs = runs;
    img->raw_nb_runs = n;
    img->raw_chart = QCOW2__CHART_FULL;
}

/* The run of img's file holding off (< file_size): its length from off and whether a hole. */
static int raw_run_at(qcow2_image *img, uint64_t off, uint64_t *run, bool *hole)
{
    if (img->raw_ext_len && off >= img->raw_ext_off && off < img->raw_ext_off + img->raw_ext_len) {
        /* The run found last time still covers off (reads of raw layers are often sequential). */
        *run = img->raw_ext_off + img->raw_ext_len - off;
        *hole = img->raw_ext_hole;
        return 0;
    }
    if (img->raw_chart == QCOW2__CHART_UNKNOWN)
        raw_chart(img);
    if (img->raw_chart == QCOW2__CHART_FULL) {
        unsigned lo = 0, hi = img->raw_nb_runs;
        while (hi - lo > 1) {
            unsigned mid = lo + (hi - lo) / 2;
            if (img->raw_runs[mid].off <= off)
                lo = mid;
            else
                hi = mid;
        }
        img->raw_ext_off = img->raw_runs[lo].off;
        img->raw_ext_len = img->raw_runs[lo].len;
        img->raw_ext_hole = img->raw_runs[lo].hole;
    } else {
        uint64_t whole;
        int rc = qcow2__io_extent(img->io, img->name, off, img->file_size - off, &whole, hole);
        if (rc)
            return rc;
        img->raw_ext_off = off;
        img->raw_ext_len = whole;
        img->raw_ext_hole = *hole;
    }
    *run = img->raw_ext_off + img->raw_ext_len - off;
    *hole = img->raw_ext_hole;
    return 0;
}

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
        rc = raw_run_at(img, off, &run, &hole);
        if (rc)
            return rc;
        run = qcow2__min(len, run);
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

/*
 * THE CHAIN MAP
 *
 * A read through a deep chain asks layer after layer whether it holds the
 * range; a random 4 KiB read through 64 layers costs 64 lookups. The chain
 * map answers at once: for each guest unit (the smallest subcluster of any
 * qcow2 layer in the chain) it keeps the depth of the layer that holds it,
 * CMAP_NONE where nothing does (zeroes), or CMAP_WALK where the unit is
 * split between layers or not known (the plain walk reads it). It lives in
 * the image the reads start from, in CMAP_BLOCKS blocks of CMAP_UNITS
 * entries built on demand (each block asks every layer once, run by run)
 * and replaced least recently used first: about 130 KiB in all.
 *
 * Staleness. Every change to any layer's mapping, or to the chain's shape
 * (a new backing link, a resize, a snapshot applied), bumps the chain's
 * generation (qcow2__pool_bump, in qcow2__mapping_changed and the layer
 * operations); a map built under an older generation is rebuilt. The one
 * exception keeps guest writes cheap: a data write to the top of the chain
 * (depth 0, nothing above it) marks the units it wrote as the top's in its
 * own map instead (qcow2__cmap_wrote). The map is only used when every
 * layer shares the top's pool, so every change in the chain is seen.
 */
#define CMAP_UNITS 4096u   /* entries per block */
#define CMAP_BLOCKS 16u    /* blocks kept */
#define CMAP_MIN_LAYERS 3u /* shallower chains walk (two lookups at most) */
#define CMAP_NONE 0xffffu  /* no layer holds the unit: zeroes */
#define CMAP_WALK 0xfffeu  /* split or unknown: read it with the walk */
#define CMAP_UNSET 0xfffdu /* while a block is built */
#define CMAP_MAX_LAYERS 0xfff0u

struct cmap_block {
    uint64_t first; /* first unit; UINT64_MAX = empty */
    uint64_t used;  /* LRU tick */
    bool failed;    /* building it failed: its units are read with the walk */
    uint16_t e[CMAP_UNITS];
};

struct qcow2__cmap {
    uint64_t gen;       /* chain generation the map describes; 0 = none yet */
    bool usable;        /* false: this chain reads with the walk */
    unsigned unit_bits; /* log2 of the unit */
    unsigned nb_layers;
    qcow2_image **layers; /* depth -> layer */
    uint64_t tick;
    struct cmap_block blocks[CMAP_BLOCKS];
};

void qcow2__cmap_free(qcow2_image *img)
{
    if (img->cmap) {
        qcow2__free(img->cmap->layers);
        qcow2__free(img->cmap);
        img->cmap = NULL;
    }
}

static void cmap_clear(struct qcow2__cmap *m)
{
    for (unsigned i = 0; i < CMAP_BLOCKS; i++)
        m->blocks[i].first = UINT64_MAX;
}

/* Set up (again) for the chain below img as it is now: which layers, which unit. */
static int cmap_setup(qcow2_image *img, struct qcow2__cmap *m, uint64_t gen)
{
    unsigned n = 0, bits = 21;
    qcow2_image **layers;

    m->gen = gen;
    m->usable = false;
    cmap_clear(m);
    for (qcow2_image *l = img; l; l = l->backing) {
        if (l->pool != img->pool || n >= CMAP_MAX_LAYERS)
            return 0; /* a layer from another chain: its changes would not be seen */
        if (l->fmt == QCOW2_FORMAT_QCOW2)
            bits = l->sc_bits < bits ? l->sc_bits : bits;
        else if (l->backing)
            return 0;
        n++;
    }
    if (n < CMAP_MIN_LAYERS)
        return 0;
    layers = qcow2__realloc(m->layers, n * sizeof(*layers));
    if (!layers)
        return qcow2__nomem();
    m->layers = layers;
    n = 0;
    for (qcow2_image *l = img; l; l = l->backing)
        layers[n++] = l;
    m->nb_layers = n;
    m->unit_bits = bits;
    m->usable = true;
    return 0;
}

/* Give units overlapping bytes [a, b) of the block to depth d where still unset. */
static void cmap_mark(const struct qcow2__cmap *m, struct cmap_block *blk, uint64_t a, uint64_t b,
                      uint16_t d)
{
    uint64_t base = blk->first << m->unit_bits, unit = 1ull << m->unit_bits;
    uint64_t i, last;

    if (a >= b)
        return;
    i = (a - base) >> m->unit_bits;
    last = (b - 1 - base) >> m->unit_bits;
    for (; i <= last; i++) {
        uint64_t us = base + (i << m->unit_bits);
        if (blk->e[i] != CMAP_UNSET)
            continue;
        blk->e[i] = (us >= a && us + unit <= b) ? d : CMAP_WALK;
    }
}

/* Fill blk for the units from first on: ask each layer, top down, run by run. */
static int cmap_build(qcow2_image *img, struct qcow2__cmap *m, struct cmap_block *blk,
                      uint64_t first)
{
    uint64_t start = first << m->unit_bits;
    uint64_t end = qcow2__min(start + ((uint64_t)CMAP_UNITS << m->unit_bits), img->size);
    uint64_t limit = end;
    unsigned d;
    int rc;

    for (unsigned i = 0; i < CMAP_UNITS; i++)
        blk->e[i] = CMAP_UNSET;
    blk->first = first;
    blk->failed = false;
    for (d = 0; d < m->nb_layers && start < limit; d++) {
        qcow2_image *l = m->layers[d];
        uint64_t lim = qcow2__min(limit, l->size), pos = start;

        if (lim < limit) /* past this layer's end (which may lie before the block): zeroes */
            cmap_mark(m, blk, qcow2__max(lim, start), limit, CMAP_NONE);
        if (l->fmt != QCOW2_FORMAT_QCOW2) {
            if (start < lim)
                cmap_mark(m, blk, start, lim, (uint16_t)d); /* raw: data or holes, all here */
            limit = start;
            break;
        }
        while (pos < lim) {
            struct qcow2__lrun r;
            rc = qcow2__layer_extent(l, pos, lim - pos, &r);
            if (rc)
                return rc;
            if (r.kind != QCOW2__RUN_UNALLOC)
                cmap_mark(m, blk, pos, pos + r.len, (uint16_t)d);
            pos += r.len;
        }
        limit = lim;
    }
    if (start < limit)
        cmap_mark(m, blk, start, limit, CMAP_NONE); /* below the last layer */
    return 0;
}

/*
 * The block holding unit u, built if needed. A block that cannot be built
 * (damaged or unreadable metadata anywhere in its range, in any layer) is
 * kept as failed and its units are read with the walk, which fails only
 * where the damage is actually read, as without a map.
 */
static struct cmap_block *cmap_block(qcow2_image *img, struct qcow2__cmap *m, uint64_t u)
{
    uint64_t first = u - u % CMAP_UNITS;
    struct cmap_block *victim = &m->blocks[0];

    for (unsigned i = 0; i < CMAP_BLOCKS; i++) {
        struct cmap_block *b = &m->blocks[i];
        if (b->first == first) {
            b->used = ++m->tick;
            return b;
        }
        if (b->first == UINT64_MAX || (victim->first != UINT64_MAX && b->used < victim->used))
            victim = b;
    }
    {
        struct qcow2__err_saved saved;
        qcow2__err_save(&saved);
        if (cmap_build(img, m, victim, first)) {
            qcow2__err_restore(&saved); /* not this read's failure, unless it reads there */
            victim->failed = true;
        }
    }
    victim->used = ++m->tick;
    return victim;
}

/* The map for reads from img, or NULL when this chain reads with the walk. */
static struct qcow2__cmap *cmap_get(qcow2_image *img)
{
    uint64_t gen = qcow2__pool_gen(img->pool);
    struct qcow2__cmap *m = img->cmap;

    if (!gen || !img->backing || !img->backing->backing)
        return NULL;
    if (!m) {
        m = qcow2__calloc(1, sizeof(*m));
        if (!m)
            return NULL; /* the walk needs no memory */
        img->cmap = m;
    }
    if (m->gen != gen) {
        struct qcow2__err_saved saved;
        qcow2__err_save(&saved);
        if (cmap_setup(img, m, gen)) {
            qcow2__err_restore(&saved); /* out of memory for the map: the walk needs none */
            m->usable = false;
        }
    }
    return m->usable ? m : NULL;
}

/* Bytes [off, off + len) that the map gives to layer l (depth >= 0): read them from l. */
static int read_held(qcow2_image *img, qcow2_image *l, uint8_t *buf, uint64_t len, uint64_t off)
{
    while (len) {
        struct qcow2__lrun r;
        int rc;

        if (l->fmt != QCOW2_FORMAT_QCOW2)
            return read_raw(l, buf, len, off);
        rc = qcow2__layer_extent(l, off, len, &r);
        if (rc)
            return rc;
        if (r.kind == QCOW2__RUN_UNALLOC)
            rc = read_layer(img, buf, r.len, off); /* cannot happen with a fresh map; stay right */
        else
            rc = read_run(l, &r, buf, off);
        if (rc)
            return rc;
        buf += r.len;
        off += r.len;
        len -= r.len;
    }
    return 0;
}

static int read_mapped(qcow2_image *img, struct qcow2__cmap *m, uint8_t *buf, uint64_t len,
                       uint64_t off)
{
    while (len) {
        uint64_t u = off >> m->unit_bits, n;
        struct cmap_block *blk = cmap_block(img, m, u);
        unsigned i = (unsigned)(u - blk->first), k;
        uint16_t v = blk->failed ? CMAP_WALK : blk->e[i];
        int rc;

        for (k = i + 1; k < CMAP_UNITS && (blk->failed || blk->e[k] == v); k++)
            ;
        n = qcow2__min(len, ((blk->first + k) << m->unit_bits) - off);
        if (v == CMAP_NONE) {
            memset(buf, 0, (size_t)n);
            rc = 0;
        } else if (v == CMAP_WALK) {
            rc = read_layer(img, buf, n, off);
        } else {
            rc = read_held(img, m->layers[v], buf, n, off);
        }
        if (rc)
            return rc;
        buf += n;
        off += n;
        len -= n;
    }
    return 0;
}

void qcow2__cmap_wrote(qcow2_image *img, uint64_t off, uint64_t len, bool held)
{
    struct qcow2__cmap *m = img->cmap;
    uint64_t unit, gran, a, b;

    if (!m || !m->usable || m->gen != qcow2__pool_gen(img->pool) || !len)
        return;
    /* A data write leaves the top holding every subcluster it touched, whole. */
    unit = 1ull << m->unit_bits;
    gran = img->fmt == QCOW2_FORMAT_QCOW2 ? 1ull << img->sc_bits : unit;
    a = off & ~(gran - 1);
    b = qcow2__min(qcow2__align_up(off + len, gran), img->size);
    for (unsigned i = 0; i < CMAP_BLOCKS; i++) {
        struct cmap_block *blk = &m->blocks[i];
        uint64_t bs, be;
        if (blk->first == UINT64_MAX)
            continue;
        bs = blk->first << m->unit_bits;
        be = bs + ((uint64_t)CMAP_UNITS << m->unit_bits);
        if (b <= bs || a >= be)
            continue;
        for (uint64_t us = qcow2__max(a, bs) & ~(unit - 1); us < qcow2__min(b, be); us += unit) {
            uint64_t j = (us - bs) >> m->unit_bits;
            blk->e[j] = (held && us >= a && us + unit <= b) ? 0 : CMAP_WALK;
        }
    }
}

int qcow2__read_walk(qcow2_image *img, void *buf, size_t len, uint64_t off)
{
    assert(qcow2__in_range(off, len, qcow2__max(img->size, img->vm_end)));
    return read_layer(img, buf, len, off);
}

int qcow2_image_read(qcow2_image *img, void *buf, size_t len, uint64_t guest_off)
{
    struct qcow2__cmap *m;

    if (!img || (!buf && len))
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "qcow2_image_read: missing argument");
    if (!qcow2__in_range(guest_off, len, img->size))
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "read of %zu bytes at 0x%" PRIx64 " is beyond the virtual size (%" PRIu64
                          " bytes)",
                          len, guest_off, img->size);
    for (qcow2_image *l = img; l; l = l->backing) {
        /* A share put off (share.c) is data the chain may read: made first. */
        int rc = l->pend_n ? qcow2__share_drain(l) : 0;
        if (rc)
            return rc;
    }
    m = cmap_get(img);
    if (m)
        return read_mapped(img, m, buf, len, guest_off);
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
    /* The chart (or the run found last): no lseek pair per query over a charted file. */
    rc = raw_run_at(img, off, &run, &hole);
    if (rc)
        return rc;
    out->length = qcow2__min(run, len);
    out->host_off = off;
    out->flags =
        QCOW2_EXT_PRESENT | QCOW2_EXT_OFFSET_VALID | (hole ? QCOW2_EXT_ZERO : QCOW2_EXT_DATA);
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
                          "block status of %" PRIu64 " bytes at 0x%" PRIx64 " is outside the image",
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
    struct qcow2__err_saved saved;
    unsigned steps = 0;

    if (guest_off >= img->size)
        return;
    qcow2__err_save(&saved);
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
    qcow2__err_restore(&saved); /* a hint: whatever failed here is found again by the real read */
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
