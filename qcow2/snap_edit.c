/*
 * Changing internal snapshots: qcow2_snapshot_create, qcow2_snapshot_apply
 * and qcow2_snapshot_delete, with the walk over an L1/L2 tree that checks,
 * raises, drops or tallies refcounts and the new snapshot table they write;
 * and qcow2_snapshot_unique_bytes, a tallying walk. snapshot.c parses the
 * table (its entry format is described there) and answers the read-only
 * queries.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "qcow2_int.h"

/* ==== creating, applying and deleting snapshots ============================
 *
 * NOTES ON THE DESIGN
 *
 * Reference counting follows qemu (and check.c): an L2 table counts one
 * reference per L1 entry that points at it, and every cluster an L2 entry
 * maps counts one reference per walk of that table. Creating a snapshot of
 * a tree therefore adds one to every L2 table and every mapped cluster of
 * the active tree; deleting one subtracts one from its whole tree.
 *
 * Each operation has a read-only phase (find the snapshot, validate every
 * L1 and L2 entry the walk will touch, make sure no refcount overflows) that
 * fails without changing anything, then a mutating phase whose failures put
 * the handle in the FATAL state. The commit point of every operation is one
 * header write (qcow2__header_write: the first sector last, each part flushed):
 *
 *   create: copy of the active L1 in new clusters; +1 on the active tree;
 *           COPIED cleared in the active L1 and L2 tables; the new snapshot
 *           table in new clusters; ordered flush; HEADER (nb_snapshots,
 *           snapshots_offset); the old table freed.
 *   apply:  the new active L1 (the snapshot's, COPIED cleared, padded to the
 *           snapshot's disk size) in new clusters; +1 on the snapshot's
 *           tree; ordered flush; HEADER (l1_table_offset, l1_size, size);
 *           -1 on the old active tree and its L1 freed; COPIED recomputed.
 *   delete: the table without the entry in new clusters; ordered flush;
 *           HEADER; -1 on the snapshot's tree, its L1 and the old table
 *           freed; COPIED recomputed.
 *
 * Before the header write the file holds the old state plus clusters whose
 * refcount is too high (leaks); after it, the new state plus leaks until
 * the frees are durable. qemu overwrites the active L1 in place on apply; a
 * new L1 switched by the header write is never seen half-written.
 *
 * The one window no ordering closes: a COPIED flag and the refcount it
 * mirrors live in different sectors, so between the flush of refcount
 * blocks and the flush of L2/L1 tables a crash can leave a flag one step
 * behind its refcount (qemu has the same window). check reports it as an
 * OFLAG_COPIED error; `check -r all` fixes it and no guest data is affected.
 *
 * Clusters freed here are dropped at once (the references are durably gone
 * when the frees run): a freed L2 table also leaves the L2 cache, so a later
 * allocation of the same cluster never finds stale entries there.
 */

#define SNAP_EXTRA_WRITE 24u /* extra data written: vm_state_size, disk size, icount */

/* Padded on-disk length of an entry as it is stored now. */
static uint64_t snap_entry_len_stored(const struct qcow2__snapshot *sn)
{
    return qcow2__align_up(
        QCOW2__SNAP_HDR_LEN + (uint64_t)sn->extra_len + strlen(sn->id) + strlen(sn->name), 8);
}

/* Padded length of an entry as snap_serialize() writes it. */
static uint64_t snap_entry_len_new(const struct qcow2__snapshot *sn)
{
    uint64_t extra = qcow2__max(sn->extra_len, SNAP_EXTRA_WRITE);

    return qcow2__align_up(QCOW2__SNAP_HDR_LEN + extra + strlen(sn->id) + strlen(sn->name), 8);
}

/* Bytes of the table on disk now (what check.c counts). */
uint64_t qcow2__snap_table_len(const qcow2_image *img)
{
    uint64_t len = 0;

    for (uint32_t i = 0; i < img->nb_snaps; i++)
        len += snap_entry_len_stored(&img->snaps[i]);
    return len;
}

/*
 * Serialize one entry at p. Extra data is at least 24 bytes (vm_state_size,
 * disk size, icount, as qemu writes them); bytes past what this library
 * knows are kept verbatim.
 */
static uint64_t snap_serialize(const struct qcow2__snapshot *sn, uint8_t *p)
{
    uint32_t extra = (uint32_t)qcow2__max(sn->extra_len, SNAP_EXTRA_WRITE);
    size_t id_len = strlen(sn->id), name_len = strlen(sn->name);

    qcow2__put_be64(p, sn->l1_off);
    qcow2__put_be32(p + 8, sn->l1_size);
    qcow2__put_be16(p + 12, (uint16_t)id_len);
    qcow2__put_be16(p + 14, (uint16_t)name_len);
    qcow2__put_be32(p + 16, sn->date_sec);
    qcow2__put_be32(p + 20, sn->date_nsec);
    qcow2__put_be64(p + 24, sn->vm_clock_nsec);
    qcow2__put_be32(p + 32, (uint32_t)sn->vm_state_size); /* qemu truncates too */
    qcow2__put_be32(p + 36, extra);
    if (sn->extra_len > SNAP_EXTRA_WRITE)
        memcpy(p + QCOW2__SNAP_HDR_LEN, sn->extra, sn->extra_len);
    qcow2__put_be64(p + QCOW2__SNAP_HDR_LEN, sn->vm_state_size);
    qcow2__put_be64(p + QCOW2__SNAP_HDR_LEN + 8, sn->disk_size);
    qcow2__put_be64(p + QCOW2__SNAP_HDR_LEN + 16, (uint64_t)sn->icount);
    memcpy(p + QCOW2__SNAP_HDR_LEN + extra, sn->id, id_len);
    memcpy(p + QCOW2__SNAP_HDR_LEN + extra + id_len, sn->name, name_len);
    return snap_entry_len_new(sn);
}

/* The handle cannot go on after a failure in a mutating phase. */
static int snap_fail(qcow2_image *img, int rc)
{
    return qcow2__fatal(img, rc);
}

/* What a walk over a tree does to each cluster it reaches. */
enum snap_walk {
    WALK_CHECK, /* validate entries; every reached cluster has refcount >= 1 */
    WALK_ROOM,  /* WALK_CHECK, and each refcount can take what WALK_RAISE adds */
    WALK_RAISE, /* +1 */
    WALK_DROP,  /* -1; clusters that reach 0 are freed */
    WALK_TALLY, /* validate entries and tally every reach; change nothing */
};

static uint64_t snap_refcount_max(const qcow2_image *img)
{
    return img->refcount_bits == 64 ? UINT64_MAX : (1ull << img->refcount_bits) - 1;
}

/* Apply op to the clusters of [off, off+len). is_l2: the range is an L2 table. */
static int snap_touch(qcow2_image *img, uint64_t off, uint64_t len, enum snap_walk op, bool is_l2)
{
    uint64_t first = off >> img->cluster_bits, last = (off + len - 1) >> img->cluster_bits;
    int rc;

    for (uint64_t c = first; c <= last; c++) {
        uint64_t v;

        rc = qcow2__refcount_get(img, c, &v);
        if (rc)
            return rc;
        switch (op) {
        case WALK_TALLY:
            break;
        case WALK_CHECK:
        case WALK_ROOM:
            if (v == 0)
                return qcow2__corrupt(img,
                                      "cluster 0x%" PRIx64 " is referenced but its refcount is 0",
                                      c << img->cluster_bits);
            break;
        case WALK_RAISE:
            rc = qcow2__refcount_set(img, c, v + 1);
            if (rc)
                return rc;
            break;
        case WALK_DROP:
            if (v == 0)
                return qcow2__corrupt(img, "refcount of cluster 0x%" PRIx64
                                           " would drop below zero",
                                      c << img->cluster_bits);
            rc = qcow2__refcount_set(img, c, v - 1);
            if (rc)
                return rc;
            if (v == 1) {
                uint64_t coff = c << img->cluster_bits;
                if (is_l2)
                    qcow2__cache_drop(&img->l2c, coff);
                if (coff == (img->cbyte_off & ~(img->cluster_size - 1)))
                    img->cbyte_off = 0;
                rc = qcow2__io_punch(img->io, img->name, coff, img->cluster_size);
                if (rc)
                    return rc;
            }
            break;
        }
    }
    return 0;
}

/*
 * WALK_ROOM's tally: the index of every cluster WALK_RAISE will raise, once
 * per raise. A host cluster holding k compressed clusters (or reached k
 * times in any other way) is raised k times, so its refcount needs room
 * for +k, not +1: counting per host cluster would let the raise overflow
 * half-way, after the first writes.
 */
struct snap_tally {
    uint64_t *c;
    size_t n, cap;
};

static int snap_tally_add(qcow2_image *img, struct snap_tally *t, uint64_t off, uint64_t len)
{
    uint64_t first = off >> img->cluster_bits, last = (off + len - 1) >> img->cluster_bits;

    for (uint64_t c = first; c <= last; c++) {
        if (t->n == t->cap) {
            size_t cap = t->cap ? t->cap * 2 : 1024;
            uint64_t *p;

            if (cap > SIZE_MAX / sizeof(*p))
                return qcow2__nomem();
            p = qcow2__realloc(t->c, cap * sizeof(*p));
            if (!p)
                return qcow2__nomem();
            t->c = p;
            t->cap = cap;
        }
        t->c[t->n++] = c;
    }
    return 0;
}

static int snap_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Visit each tallied cluster once, in order, with k = how many times it was
 * tallied and v = its refcount; stop at the first non-zero return.
 */
static int snap_tally_each(qcow2_image *img, struct snap_tally *t,
                           int (*fn)(qcow2_image *img, uint64_t c, uint64_t k, uint64_t v, void *arg),
                           void *arg)
{
    if (t->n)
        qsort(t->c, t->n, sizeof(*t->c), snap_cmp_u64);
    for (size_t i = 0; i < t->n;) {
        uint64_t c = t->c[i], k = 0, v;
        int rc;

        while (i < t->n && t->c[i] == c) {
            k++;
            i++;
        }
        rc = qcow2__refcount_get(img, c, &v);
        if (!rc)
            rc = fn(img, c, k, v, arg);
        if (rc)
            return rc;
    }
    return 0;
}

/* The refcount can take as many raises as the cluster was tallied. */
static int snap_room_one(qcow2_image *img, uint64_t c, uint64_t k, uint64_t v, void *arg)
{
    uint64_t max = snap_refcount_max(img);

    QCOW2_UNUSED(arg);
    if (v > max || k > max - v)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "refcount width too small: cluster 0x%" PRIx64 " has refcount %" PRIu64
                          " and needs %" PRIu64 " more, past the %" PRIu64
                          " that refcount_bits=%u allows",
                          c << img->cluster_bits, v, k, max, img->refcount_bits);
    return 0;
}

/* Every reference to the cluster is a tallied one: it is the tally's alone. */
static int snap_sole_one(qcow2_image *img, uint64_t c, uint64_t k, uint64_t v, void *arg)
{
    QCOW2_UNUSED(c);
    if (v == k)
        *(uint64_t *)arg += img->cluster_size;
    return 0;
}

/* Validate one L2 entry of the table at l2_off (index i). */
static int snap_check_l2e(qcow2_image *img, uint64_t l2_off, uint64_t i, uint64_t e)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff = e & img->coff_mask;
        if (coff > QCOW2_MAX_HOST_OFFSET || coff < img->cluster_size || coff >= img->file_size)
            return qcow2__corrupt(img,
                                  "compressed cluster at 0x%" PRIx64 " (L2 table 0x%" PRIx64
                                  " entry %" PRIu64 ") lies outside the file",
                                  coff, l2_off, i);
        return 0;
    }
    e &= QCOW2_L2E_OFFSET_MASK;
    if (e && ((e & (img->cluster_size - 1)) || e < img->cluster_size || e >= img->file_size))
        return qcow2__corrupt(img,
                              "cluster offset 0x%" PRIx64 " (L2 table 0x%" PRIx64 " entry %" PRIu64
                              ") is misaligned or outside the file",
                              e, l2_off, i);
    return 0;
}

/*
 * Walk the tree of an L1 table (native entries): every L2 table, then
 * every cluster it maps (data, zero-allocated, compressed spans). For
 * WALK_DROP a table's clusters go before the table itself.
 */
static int snap_walk_tree(qcow2_image *img, const uint64_t *l1, uint64_t l1_size, enum snap_walk op,
                          struct snap_tally *keep)
{
    uint8_t *table = qcow2__malloc((size_t)img->cluster_size);
    struct snap_tally tally = {NULL, 0, 0};
    bool tallying = op == WALK_ROOM || op == WALK_TALLY;
    bool checking = op == WALK_CHECK || tallying;
    int rc = 0;

    if (!table)
        return qcow2__nomem();
    for (uint64_t i = 0; i < l1_size && !rc; i++) {
        uint64_t l2_off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        const uint8_t *t;

        if (!l2_off)
            continue;
        if (checking) {
            if (l1[i] & QCOW2_L1E_RESERVED_MASK & ~QCOW2_OFLAG_COPIED) {
                rc = qcow2__corrupt(img, "L1 entry %" PRIu64 " has reserved bits set: 0x%016" PRIx64,
                                    i, l1[i]);
                break;
            }
            rc = qcow2__check_l2_offset(img, i, l2_off);
            if (rc)
                break;
        }
        rc = qcow2__l2_load(img, l2_off, &t);
        if (rc)
            break;
        /* Refcount updates may evict and flush; work on a copy of the table. */
        memcpy(table, t, (size_t)img->cluster_size);
        if (op != WALK_DROP && op != WALK_TALLY)
            rc = snap_touch(img, l2_off, img->cluster_size, op, true);
        if (!rc && tallying)
            rc = snap_tally_add(img, &tally, l2_off, img->cluster_size);
        for (uint64_t j = 0; j < img->l2_entries && !rc; j++) {
            uint64_t e = qcow2__be64(table + j * img->l2e_bytes);

            if (checking) {
                rc = snap_check_l2e(img, l2_off, j, e);
                if (rc)
                    break;
            }
            if (e & QCOW2_OFLAG_COMPRESSED) {
                uint64_t off, len;
                qcow2__compressed_range(img, e, &off, &len);
                if (op != WALK_TALLY)
                    rc = snap_touch(img, off, len, op, false);
                if (!rc && tallying)
                    rc = snap_tally_add(img, &tally, off, len);
            } else if (e & QCOW2_L2E_OFFSET_MASK) {
                if (op != WALK_TALLY)
                    rc = snap_touch(img, e & QCOW2_L2E_OFFSET_MASK, 1, op, false);
                if (!rc && tallying)
                    rc = snap_tally_add(img, &tally, e & QCOW2_L2E_OFFSET_MASK, 1);
            }
        }
        if (!rc && op == WALK_DROP)
            rc = snap_touch(img, l2_off, img->cluster_size, op, true);
    }
    if (!rc && op == WALK_ROOM)
        rc = snap_tally_each(img, &tally, snap_room_one, NULL);
    if (!rc && keep) {
        *keep = tally; /* the caller's now */
        tally.c = NULL;
    }
    qcow2__free(tally.c);
    qcow2__free(table);
    return rc;
}

/* Free the clusters of a table of len bytes at off (an L1 or a snapshot table). */
static int snap_drop_range(qcow2_image *img, uint64_t off, uint64_t len)
{
    if (!off || !len)
        return 0;
    return snap_touch(img, off, qcow2__align_up(len, img->cluster_size), WALK_DROP, false);
}

/*
 * Set COPIED exactly where the refcount is 1 in the active L1 and the L2
 * tables it reaches (invariant 2), through the L2 cache and img->l1.
 */
static int snap_recompute_copied(qcow2_image *img)
{
    uint8_t *table = qcow2__malloc((size_t)img->cluster_size);
    int rc = 0;

    if (!table)
        return qcow2__nomem();
    for (uint64_t i = 0; i < img->hdr.l1_size && !rc; i++) {
        uint64_t l2_off = img->l1[i] & QCOW2_L1E_OFFSET_MASK, v, ne;
        struct qcow2__cslot *slot;
        const uint8_t *t;
        bool changed = false;

        if (!l2_off)
            continue;
        rc = qcow2__refcount_get(img, l2_off >> img->cluster_bits, &v);
        if (rc)
            break;
        ne = v == 1 ? img->l1[i] | QCOW2_OFLAG_COPIED : img->l1[i] & ~QCOW2_OFLAG_COPIED;
        if (ne != img->l1[i]) {
            img->l1[i] = ne;
            img->l1_dirty = true;
        }
        rc = qcow2__l2_load(img, l2_off, &t);
        if (rc)
            break;
        memcpy(table, t, (size_t)img->cluster_size);
        for (uint64_t j = 0; j < img->l2_entries && !rc; j++) {
            uint8_t *p = table + j * img->l2e_bytes;
            uint64_t e = qcow2__be64(p), host = e & QCOW2_L2E_OFFSET_MASK;

            if ((e & QCOW2_OFLAG_COMPRESSED) || !host)
                continue;
            rc = qcow2__refcount_get(img, host >> img->cluster_bits, &v);
            ne = v == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
            if (!rc && ne != e) {
                qcow2__put_be64(p, ne);
                changed = true;
            }
        }
        if (rc || !changed)
            continue;
        rc = qcow2__cache_get(img, &img->l2c, l2_off, true, &slot);
        if (!rc) {
            memcpy(slot->data, table, (size_t)img->cluster_size);
            slot->dirty = true;
        }
    }
    qcow2__free(table);
    return rc;
}

/* Refusals common to create, apply and delete. */
static int snap_check_image(qcow2_image *img)
{
    int rc;

    if (!img)
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "missing image");
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "internal snapshots need a qcow2 image");
    rc = qcow2__check_writable(img);
    if (rc)
        return rc;
    if ((img->hdr.incompat & QCOW2_INCOMPAT_DIRTY) && !img->write_started)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "image was not closed cleanly (lazy refcounts); repair it with "
                          "'qsnap image check -r all' first");
    if (img->bitmaps_ext)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "image has persistent bitmaps, which internal snapshots would not "
                          "keep consistent; remove them first");
    if (img->hdr.incompat & QCOW2_INCOMPAT_DATA_FILE)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "internal snapshots of an image with an external data file are not "
                          "supported");
    /* Start from a durable state: nothing of an earlier write may race the switch. */
    rc = qcow2__metadata_flush(img);
    if (rc)
        return rc;
    img->dbuf_host_off = UINT64_MAX;
    /* Autoclear features are not maintained here: they go before anything changes. */
    if (img->hdr.autoclear) {
        img->hdr.autoclear = 0;
        rc = qcow2__header_write(img);
        if (rc)
            return snap_fail(img, rc);
    }
    return 0;
}

/* The snapshot apply or delete acts on (by id or name), after the common refusals. */
static int snap_target(qcow2_image *img, const char *snapshot, uint32_t *idx)
{
    int rc;

    if (!snapshot)
        return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL, "missing snapshot name");
    rc = snap_check_image(img);
    return rc ? rc : qcow2__snap_find(img, snapshot, idx);
}

/* Allocate clusters for len bytes and write buf (len bytes, zero padded to clusters) there. */
static int snap_write_new(qcow2_image *img, const uint8_t *buf, uint64_t len, uint64_t *off_out)
{
    uint64_t nb = qcow2__align_up(len, img->cluster_size) >> img->cluster_bits;
    int rc;

    rc = qcow2__alloc_clusters(img, nb, off_out);
    if (rc)
        return rc;
    return qcow2__io_write(img->io, img->name, buf, (size_t)(nb << img->cluster_bits), *off_out);
}

/*
 * Serialize the table of img->snaps with entry skip left out (UINT32_MAX:
 * none) and add appended at the end (NULL: none) into a new cluster-padded
 * buffer.
 */
static int snap_build_table(qcow2_image *img, uint32_t skip, const struct qcow2__snapshot *add,
                            uint8_t **buf_out, uint64_t *len_out)
{
    uint64_t len = 0, pos = 0;
    uint8_t *buf;

    for (uint32_t i = 0; i < img->nb_snaps; i++)
        if (i != skip)
            len += snap_entry_len_new(&img->snaps[i]);
    if (add)
        len += snap_entry_len_new(add);
    if (len > QCOW2_MAX_SNAPSHOT_TABLE_BYTES)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "the snapshot table would exceed %llu bytes",
                          (unsigned long long)QCOW2_MAX_SNAPSHOT_TABLE_BYTES);
    buf = qcow2__calloc(1, (size_t)qcow2__max(qcow2__align_up(len, img->cluster_size), 1));
    if (!buf)
        return qcow2__nomem();
    for (uint32_t i = 0; i < img->nb_snaps; i++)
        if (i != skip)
            pos += snap_serialize(&img->snaps[i], buf + pos);
    if (add)
        pos += snap_serialize(add, buf + pos);
    assert(pos == len);
    *buf_out = buf;
    *len_out = len;
    return 0;
}

/* The entries of a v2 table without the 24 bytes of extra data gain them when rewritten. */
static int snap_upgrade_extra(struct qcow2__snapshot *sn)
{
    uint8_t *extra;

    if (sn->extra_len >= SNAP_EXTRA_WRITE)
        return 0;
    extra = qcow2__calloc(1, SNAP_EXTRA_WRITE);
    if (!extra)
        return qcow2__nomem();
    qcow2__put_be64(extra, sn->vm_state_size);
    qcow2__put_be64(extra + 8, sn->disk_size);
    qcow2__put_be64(extra + 16, (uint64_t)sn->icount);
    qcow2__free(sn->extra);
    sn->extra = extra;
    sn->extra_len = SNAP_EXTRA_WRITE;
    return 0;
}

/*
 * The extra data every entry will have once the table is rewritten by
 * snap_serialize(): one buffer per entry that gains bytes (NULL otherwise),
 * allocated before the commit point so that nothing can fail after it.
 */
static int snap_prepare_upgrades(qcow2_image *img, uint8_t ***out)
{
    uint8_t **ups = qcow2__calloc((size_t)qcow2__max(img->nb_snaps, 1), sizeof(*ups));

    *out = ups;
    if (!ups)
        return qcow2__nomem();
    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        struct qcow2__snapshot tmp = img->snaps[i];

        if (tmp.extra_len >= SNAP_EXTRA_WRITE)
            continue;
        tmp.extra = NULL;
        if (snap_upgrade_extra(&tmp))
            return qcow2__nomem();
        ups[i] = tmp.extra;
    }
    return 0;
}

/* Swap the prepared extra data in (entry skip is about to go), then free the array. */
static void snap_apply_upgrades(qcow2_image *img, uint8_t **ups, uint32_t skip)
{
    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        if (!ups[i] || i == skip)
            continue;
        qcow2__free(img->snaps[i].extra);
        img->snaps[i].extra = ups[i];
        img->snaps[i].extra_len = SNAP_EXTRA_WRITE;
        ups[i] = NULL;
    }
}

static void snap_free_upgrades(uint8_t **ups, uint32_t n)
{
    if (!ups)
        return;
    for (uint32_t i = 0; i < n; i++)
        qcow2__free(ups[i]);
    qcow2__free(ups);
}

/* Entries of the active L1 needed for a virtual size of size bytes. */
static uint64_t snap_size_to_l1(const qcow2_image *img, uint64_t size)
{
    uint32_t shift = img->cluster_bits + img->l2_bits;

    return (size >> shift) + ((size & ((1ull << shift) - 1)) != 0);
}

int qcow2_snapshot_create(qcow2_image *img, const char *name, const qcow2_snapshot_opts *opts)
{
    qcow2_snapshot_opts o = QCOW2_SNAPSHOT_OPTS_INIT;
    struct qcow2__snapshot sn, *snaps;
    uint64_t l1_bytes, table_len = 0, table_off = 0, old_off, old_len;
    uint8_t *raw = NULL, *table = NULL, **ups = NULL;
    uint32_t nb_before = img ? img->nb_snaps : 0;
    char idbuf[24];
    int rc;

    memset(&sn, 0, sizeof(sn));
    if (!name)
        return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL, "missing snapshot name");
    if (opts) {
        if (opts->version != QCOW2_SNAPSHOT_OPTS_VERSION)
            return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL,
                              "unknown snapshot options version %u", opts->version);
        o = *opts;
    }
    rc = snap_check_image(img);
    if (rc)
        return rc;
    if (!name[0] || strlen(name) > UINT16_MAX || (o.id && (!o.id[0] || strlen(o.id) > UINT16_MAX)))
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "snapshot names and ids must be 1 to 65535 bytes long");
    if (img->nb_snaps >= QCOW2_MAX_SNAPSHOTS)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "the image already has %u snapshots, the most qcow2 allows",
                          QCOW2_MAX_SNAPSHOTS);
    if (!o.id) {
        /* qemu's rule: one more than the largest numeric id. */
        unsigned long long max_id = 0;
        for (uint32_t i = 0; i < img->nb_snaps; i++) {
            unsigned long long v = strtoull(img->snaps[i].id, NULL, 10);
            max_id = v > max_id ? v : max_id;
        }
        snprintf(idbuf, sizeof(idbuf), "%llu", max_id + 1);
        o.id = idbuf;
    }
    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        if (strcmp(img->snaps[i].id, o.id) == 0)
            return qcow2__err(QCOW2_EEXISTS, 0, img->name, "a snapshot with id '%s' exists",
                              o.id);
        if (strcmp(img->snaps[i].name, name) == 0)
            return qcow2__err(QCOW2_EEXISTS, 0, img->name, "a snapshot named '%s' exists", name);
    }
    if (o.date_sec == 0 && o.date_nsec == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        o.date_sec = (uint32_t)ts.tv_sec;
        o.date_nsec = (uint32_t)(ts.tv_nsec / 1000 * 1000); /* microseconds, as qemu */
    }
    rc = snap_walk_tree(img, img->l1, img->hdr.l1_size, WALK_ROOM, NULL);
    if (rc)
        return rc;

    /* The new entry, complete before anything changes. */
    sn.l1_size = img->hdr.l1_size;
    sn.date_sec = o.date_sec;
    sn.date_nsec = o.date_nsec;
    sn.vm_clock_nsec = o.vm_clock_nsec;
    sn.vm_state_size = 0;
    sn.disk_size = img->size;
    sn.icount = o.icount;
    sn.id = qcow2__strdup(o.id);
    sn.name = qcow2__strdup(name);
    snaps = qcow2__realloc(img->snaps, ((size_t)img->nb_snaps + 1) * sizeof(*snaps));
    if (snaps)
        img->snaps = snaps;
    if (!sn.id || !sn.name || !snaps || snap_upgrade_extra(&sn) ||
        snap_prepare_upgrades(img, &ups)) {
        rc = qcow2__nomem();
        goto out_free_entry;
    }
    l1_bytes = (uint64_t)sn.l1_size * 8;
    raw = qcow2__calloc(1, (size_t)qcow2__max(qcow2__align_up(l1_bytes, img->cluster_size), 1));
    if (!raw) {
        rc = qcow2__nomem();
        goto out_free_entry;
    }
    for (uint64_t i = 0; i < sn.l1_size; i++)
        qcow2__put_be64(raw + i * 8, img->l1[i] & ~QCOW2_OFLAG_COPIED);

    /* Mutating phase: from here a failure leaves leaks at worst, and a FATAL handle. */
    if (l1_bytes) {
        rc = snap_write_new(img, raw, l1_bytes, &sn.l1_off);
        if (rc)
            goto out_fatal;
    }
    rc = snap_walk_tree(img, img->l1, img->hdr.l1_size, WALK_RAISE, NULL);
    if (!rc)
        rc = snap_recompute_copied(img);
    if (!rc)
        rc = snap_build_table(img, UINT32_MAX, &sn, &table, &table_len);
    if (!rc)
        rc = snap_write_new(img, table, table_len, &table_off);
    if (!rc)
        rc = qcow2__metadata_flush(img);
    if (rc)
        goto out_fatal;

    /* The commit point. */
    old_off = img->hdr.snap_off;
    old_len = img->nb_snaps ? qcow2__snap_table_len(img) : 0;
    img->hdr.nb_snapshots = img->nb_snaps + 1;
    img->hdr.snap_off = table_off;
    rc = qcow2__header_write(img);
    if (rc) {
        img->hdr.nb_snapshots = img->nb_snaps;
        img->hdr.snap_off = old_off;
        goto out_fatal;
    }
    snap_apply_upgrades(img, ups, UINT32_MAX);
    img->snaps[img->nb_snaps++] = sn;
    memset(&sn, 0, sizeof(sn));

    rc = snap_drop_range(img, old_off, old_len);
    if (!rc)
        rc = qcow2__metadata_flush(img);
    if (rc)
        goto out_fatal;
    goto out;

out_fatal:
    rc = snap_fail(img, rc);
out_free_entry:
    qcow2__snap_entry_free(&sn);
out:
    snap_free_upgrades(ups, nb_before);
    qcow2__free(raw);
    qcow2__free(table);
    return rc;
}

int qcow2_snapshot_apply(qcow2_image *img, const char *snapshot)
{
    const struct qcow2__snapshot *sn;
    uint64_t *snap_l1 = NULL, *new_l1 = NULL, *old_l1;
    uint64_t n, need, old_l1_size, old_l1_off, new_l1_off = 0;
    uint8_t *raw = NULL;
    uint32_t idx;
    int rc;

    rc = snap_target(img, snapshot, &idx);
    if (rc)
        return rc;
    sn = &img->snaps[idx];
    if (sn->disk_size > QCOW2_MAX_VIRTUAL_SIZE)
        return qcow2__corrupt(img, "snapshot '%s' has a disk size of %" PRIu64 " bytes", sn->id,
                              sn->disk_size);
    need = snap_size_to_l1(img, sn->disk_size);
    n = qcow2__max(qcow2__max(sn->l1_size, need), 1);
    if (n * 8 > QCOW2_MAX_L1_BYTES)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "snapshot '%s': an L1 table for %" PRIu64 " bytes is too large", sn->id,
                          sn->disk_size);
    rc = qcow2__snap_read_l1(img, sn->l1_off, sn->l1_size, n, &snap_l1);
    if (rc)
        return rc;
    rc = snap_walk_tree(img, snap_l1, sn->l1_size, WALK_ROOM, NULL);
    if (!rc)
        rc = snap_walk_tree(img, img->l1, img->hdr.l1_size, WALK_CHECK, NULL);
    if (rc)
        goto out;
    new_l1 = qcow2__calloc((size_t)n, sizeof(uint64_t));
    raw = qcow2__calloc(1, (size_t)qcow2__align_up(n * 8, img->cluster_size));
    if (!new_l1 || !raw) {
        rc = qcow2__nomem();
        goto out;
    }
    /* Every table of the new active tree is shared with the snapshot: no COPIED. */
    for (uint64_t i = 0; i < n; i++) {
        new_l1[i] = snap_l1[i] & ~QCOW2_OFLAG_COPIED;
        qcow2__put_be64(raw + i * 8, new_l1[i]);
    }

    /* Mutating phase. */
    rc = snap_write_new(img, raw, n * 8, &new_l1_off);
    if (!rc)
        rc = snap_walk_tree(img, snap_l1, sn->l1_size, WALK_RAISE, NULL);
    if (!rc)
        rc = qcow2__metadata_flush(img);
    if (rc)
        goto out_fatal;

    /* The commit point: new L1, its size and the snapshot's virtual size in one write. */
    old_l1 = img->l1;
    old_l1_size = img->hdr.l1_size;
    old_l1_off = img->hdr.l1_off;
    img->hdr.l1_off = new_l1_off;
    img->hdr.l1_size = (uint32_t)n;
    img->hdr.size = sn->disk_size;
    img->size = sn->disk_size;
    img->l1 = new_l1;
    qcow2__mapping_changed(img);
    img->l1_alloc = n;
    img->l1_dirty = false;
    new_l1 = old_l1; /* freed at out */
    rc = qcow2__header_write(img);
    if (rc)
        goto out_fatal; /* unknown whether it landed: the handle is done */

    rc = snap_walk_tree(img, old_l1, old_l1_size, WALK_DROP, NULL);
    if (!rc)
        rc = snap_drop_range(img, old_l1_off, old_l1_size * 8);
    if (!rc)
        rc = snap_recompute_copied(img);
    if (!rc)
        rc = qcow2__metadata_flush(img);
    if (rc)
        goto out_fatal;
    goto out;

out_fatal:
    rc = snap_fail(img, rc);
out:
    qcow2__free(snap_l1);
    qcow2__free(new_l1);
    qcow2__free(raw);
    return rc;
}

int qcow2_snapshot_delete(qcow2_image *img, const char *snapshot)
{
    struct qcow2__snapshot gone;
    uint64_t *snap_l1 = NULL;
    uint64_t table_len = 0, table_off = 0, old_off, old_len;
    uint8_t *table = NULL, **ups = NULL;
    uint32_t nb_before = img ? img->nb_snaps : 0;
    uint32_t idx;
    int rc;

    rc = snap_target(img, snapshot, &idx);
    if (rc)
        return rc;
    rc = qcow2__snap_read_l1(img, img->snaps[idx].l1_off, img->snaps[idx].l1_size,
                             img->snaps[idx].l1_size, &snap_l1);
    if (rc)
        return rc;
    rc = snap_walk_tree(img, snap_l1, img->snaps[idx].l1_size, WALK_CHECK, NULL);
    if (!rc && img->nb_snaps > 1)
        rc = snap_build_table(img, idx, NULL, &table, &table_len);
    if (!rc)
        rc = snap_prepare_upgrades(img, &ups);
    if (rc)
        goto out;

    /* Mutating phase. */
    if (table_len) {
        rc = snap_write_new(img, table, table_len, &table_off);
        if (!rc)
            rc = qcow2__metadata_flush(img);
        if (rc)
            goto out_fatal;
    }
    old_off = img->hdr.snap_off;
    old_len = qcow2__snap_table_len(img);
    img->hdr.nb_snapshots = img->nb_snaps - 1;
    img->hdr.snap_off = table_off;
    rc = qcow2__header_write(img);
    if (rc) {
        img->hdr.nb_snapshots = img->nb_snaps;
        img->hdr.snap_off = old_off;
        goto out_fatal;
    }
    snap_apply_upgrades(img, ups, idx);
    gone = img->snaps[idx];
    memmove(&img->snaps[idx], &img->snaps[idx + 1],
            (size_t)(img->nb_snaps - idx - 1) * sizeof(*img->snaps));
    img->nb_snaps--;
    /* The references are durably gone: drop the tree, its L1 and the old table. */
    rc = snap_walk_tree(img, snap_l1, gone.l1_size, WALK_DROP, NULL);
    if (!rc)
        rc = snap_drop_range(img, gone.l1_off, (uint64_t)gone.l1_size * 8);
    if (!rc)
        rc = snap_drop_range(img, old_off, old_len);
    qcow2__snap_entry_free(&gone);
    if (!rc)
        rc = snap_recompute_copied(img);
    if (!rc)
        rc = qcow2__metadata_flush(img);
    if (rc)
        goto out_fatal;
    goto out;

out_fatal:
    rc = snap_fail(img, rc);
out:
    snap_free_upgrades(ups, nb_before);
    qcow2__free(snap_l1);
    qcow2__free(table);
    return rc;
}

int qcow2_snapshot_unique_bytes(qcow2_image *img, const char *snapshot, uint64_t *bytes_out)
{
    struct snap_tally t = {NULL, 0, 0};
    const struct qcow2__snapshot *sn;
    uint64_t *l1 = NULL;
    uint32_t idx;
    int rc;

    if (!img || !snapshot || !bytes_out)
        return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL,
                          "qcow2_snapshot_unique_bytes: missing argument");
    *bytes_out = 0;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name, "raw images have no snapshots");
    rc = qcow2__snap_find(img, snapshot, &idx);
    if (rc)
        return rc;
    sn = &img->snaps[idx];
    rc = qcow2__snap_read_l1(img, sn->l1_off, sn->l1_size, sn->l1_size, &l1);
    if (!rc)
        rc = snap_walk_tree(img, l1, sn->l1_size, WALK_TALLY, &t);
    /* Its L1 table is its own too. */
    if (!rc && sn->l1_size)
        rc = snap_tally_add(img, &t, sn->l1_off, (uint64_t)sn->l1_size * 8);
    if (!rc)
        rc = snap_tally_each(img, &t, snap_sole_one, bytes_out);
    qcow2__free(t.c);
    qcow2__free(l1);
    if (rc)
        *bytes_out = 0;
    return rc;
}
