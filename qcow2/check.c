/*
 * Check and repair (qemu-img check [-r leaks|all]): every structure that
 * references host clusters is walked and an in-memory reference count is
 * built per host cluster, then compared with the refcounts on disk
 * (refcount.c); COPIED flags of the active tree are compared with the
 * repaired refcounts. Repair goes through refcount.c (refcount blocks), the
 * L2 cache and the in-memory L1, made durable with the ordered flush of
 * flush.c; header.c rewrites the header when the dirty or corrupt bit can be
 * cleared. The public entry point is qcow2_image_check(); image.c calls
 * qcow2__repair_dirty() when a dirty (lazy refcounts) image is opened for
 * writing.
 *
 * NOTES ON THE DESIGN
 *
 * What references a cluster (each counts one reference per referrer, as
 * qemu counts them): the header (cluster 0); the active L1 table and every
 * snapshot's L1 table; each L2 table an L1 entry points at (once per L1
 * entry, so a table shared by the active L1 and a snapshot counts twice);
 * each data cluster an L2 entry points at (standard, zero-allocated,
 * extended-L2 allocated clusters); each host cluster touched by a
 * compressed descriptor's sector span; the snapshot table; the refcount
 * table; every refcount block; and, when the bitmaps extension is valid
 * (autoclear bit 0), the bitmap directory, each bitmap table and its data
 * clusters. Reference counts are uint16 and saturate at 65535: a saturated
 * count compares as "at least 65535".
 *
 * Memory is one uint16 per host cluster of the file (plus one) and one bit
 * per cluster for the overlap check, refused with QCOW2_ENOMEM beyond
 * QCOW2_CHECK_MAX_CLUSTERS; tables are read one cluster at a time.
 *
 * Figures and wording follow qemu-img 7.2: a cluster whose refcount is
 * above its reference count is a leak (even when referenced), below it a
 * corruption; allocated_clusters counts standard, zero-allocated and
 * compressed entries of the active tree; fragmentation restarts with each
 * L2 table and every compressed cluster counts as fragmented;
 * image_end_offset follows the highest cluster with a refcount or a
 * reference. Beyond qemu, reserved bits in L1/L2 entries and the zero flag
 * in a version 2 image are reported as corruptions, and L2 tables or data
 * that overlap fixed metadata (header, L1 tables, refcount structures,
 * snapshot table, bitmap structures) get a line of their own (the
 * refcount mismatch that comes with them is what is counted).
 *
 * Repair runs passes: count, compare and fix, fix COPIED flags, flush.
 * Fixing can allocate (a refcount block for a group that had none), so the
 * next pass counts again, until a pass fixes nothing (at most CHECK_PASSES).
 * Findings that stay unfixed are reported by the first pass only; the
 * counters returned are those of the last pass, the *_fixed ones summed.
 * Repair never reuses free space: new refcount blocks go at the end of the
 * image, past every counted cluster.
 */
#include <inttypes.h>
#include <stdio.h>

#include "qcow2_int.h"

/* Largest file checked: 2^28 clusters (a 512 MiB count array). */
#define QCOW2_CHECK_MAX_CLUSTERS (1ull << 28)
/* Repair passes before giving up on convergence. */
#define CHECK_PASSES 4
/* Bitmaps extension and directory (reference §1.8); qemu's caps. */
#define BITMAP_DIR_MAX_BYTES (1024ull * 65535)
#define BITMAP_ENTRY_LEN 24u
#define BITMAP_NAME_MAX 1023u
#define BITMAP_TABLE_MAX_ENTRIES 0x8000000ull
#define BME_RESERVED_MASK 0xff000000000001feull
#define BME_OFFSET_MASK 0x00fffffffffffe00ull
#define BME_ALL_ONES 1ull
#define REF_SATURATED 0xffffu

/* State of one counting pass. */
struct check {
    qcow2_image *img;
    qcow2_check_result *res; /* counters of this pass (report/payload set) */
    unsigned fix;            /* QCOW2_CHECK_FIX_* for this pass */
    bool quiet;              /* do not report findings that stay unfixed */
    uint64_t file_size;      /* bytes, at the start of the pass */
    uint64_t nb_clusters;    /* entries in refs */
    uint64_t hi_cluster;     /* highest cluster index counted, + 1 */
    uint16_t *refs;          /* references per host cluster (saturating) */
    uint8_t *meta;           /* bit per cluster: fixed metadata lives there */
    uint8_t *buf;            /* one cluster */
    uint64_t next_contig;    /* fragmentation: expected next host offset; 0 = none */
    uint64_t fixed;          /* fixes made by this pass */
    bool for_rebuild;        /* count for a rebuild: the old refcount structure is not counted */
    bool need_rebuild;       /* the refcount structure cannot be repaired in place */
    struct copy_req *copies; /* data clusters to copy (referenced past the refcount width) */
    size_t nb_copies, copies_alloc;
};

/* An L2 entry whose data cluster is referenced once too often for refcount_bits. */
struct copy_req {
    uint64_t l2_off; /* the L2 table (active tree) */
    uint64_t idx;    /* entry in it */
    uint64_t host;   /* the data cluster it shares */
};

static void report(struct check *ck, bool unfixed, const char *fmt, ...) QCOW2_PRINTF(3, 4);

static void report(struct check *ck, bool unfixed, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!ck->res->report || (unfixed && ck->quiet))
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    ck->res->report(line, ck->res->payload);
}

static uint64_t refcount_max(const qcow2_image *img)
{
    return img->refcount_bits == 64 ? UINT64_MAX : (1ull << img->refcount_bits) - 1;
}

static bool is_meta(const struct check *ck, uint64_t c)
{
    return c < ck->nb_clusters && (ck->meta[c / 8] >> (c % 8) & 1);
}

/*
 * Count one reference to every cluster of [off, off+len). A range that runs
 * a cluster or more past the end of the file is a corruption and is not
 * counted (qemu's rule). With mark, the clusters are fixed metadata.
 * Returns false when the range was refused.
 */
static bool count_range(struct check *ck, uint64_t off, uint64_t len, bool mark)
{
    qcow2_image *img = ck->img;
    uint64_t end, first, last;

    if (len == 0)
        return true;
    if (qcow2__add_overflow(off, len, &end) || end > ck->file_size + img->cluster_size - 1) {
        report(ck, true,
               "ERROR: counting reference for region exceeding the end of the file by one "
               "cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64,
               off, len);
        ck->res->corruptions++;
        return false;
    }
    first = off >> img->cluster_bits;
    last = (end - 1) >> img->cluster_bits;
    assert(last < ck->nb_clusters);
    for (uint64_t c = first; c <= last; c++) {
        if (ck->refs[c] != REF_SATURATED && ck->refs[c] >= refcount_max(img)) {
            report(ck, true, "ERROR: overflow cluster offset=0x%" PRIx64,
                   c << img->cluster_bits);
            ck->res->corruptions++;
            continue;
        }
        if (ck->refs[c] != REF_SATURATED)
            ck->refs[c]++;
        if (mark)
            ck->meta[c / 8] = (uint8_t)(ck->meta[c / 8] | (1u << (c % 8)));
        ck->hi_cluster = qcow2__max(ck->hi_cluster, c + 1);
    }
    return true;
}

/*
 * A data cluster referenced more often than refcount_bits can count (two L2
 * entries sharing it under refcount_bits=1, say): with FIX_ERRORS the entry
 * gets a copy of its own. Returns true when the copy was queued.
 */
static bool queue_copy(struct check *ck, uint64_t l2_off, uint64_t idx, uint64_t host)
{
    qcow2_image *img = ck->img;
    uint64_t c = host >> img->cluster_bits;

    if (!(ck->fix & QCOW2_CHECK_FIX_ERRORS) || ck->for_rebuild || c >= ck->nb_clusters ||
        ck->refs[c] == REF_SATURATED || ck->refs[c] < refcount_max(img))
        return false;
    if (ck->nb_copies == ck->copies_alloc) {
        size_t n = ck->copies_alloc ? ck->copies_alloc * 2 : 16;
        struct copy_req *p = qcow2__realloc(ck->copies, n * sizeof(*p));
        if (!p)
            return false;
        ck->copies = p;
        ck->copies_alloc = n;
    }
    ck->copies[ck->nb_copies].l2_off = l2_off;
    ck->copies[ck->nb_copies].idx = idx;
    ck->copies[ck->nb_copies].host = host;
    ck->nb_copies++;
    return true;
}

/* A line for an L2 table or data cluster that lands on fixed metadata. */
static void note_overlap(struct check *ck, const char *what, uint64_t off)
{
    if (is_meta(ck, off >> ck->img->cluster_bits))
        report(ck, true, "ERROR %s at 0x%" PRIx64 " overlaps other metadata", what, off);
}

/* Bytes of the snapshot table as qemu sizes it: every entry, padded to 8. */
static uint64_t snapshot_table_bytes(const qcow2_image *img)
{
    uint64_t len = 0;

    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        const struct qcow2__snapshot *sn = &img->snaps[i];
        len += qcow2__align_up(40u + (uint64_t)sn->extra_len + strlen(sn->id) + strlen(sn->name),
                               8);
    }
    return len;
}

/* One guest cluster of an L2 table: validate, count, add to the figures. */
static void check_l2_entry(struct check *ck, uint64_t l2_off, uint64_t idx, uint64_t e, uint64_t bm,
                           bool active)
{
    qcow2_image *img = ck->img;
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;

    if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff, clen;

        if (e & QCOW2_OFLAG_COPIED) {
            report(ck, true,
                   "ERROR: coffset=0x%" PRIx64
                   ": copied flag must never be set for compressed clusters",
                   e & img->coff_mask);
            ck->res->corruptions++;
            e &= ~QCOW2_OFLAG_COPIED;
        }
        if (bm) {
            report(ck, true,
                   "ERROR compressed cluster %" PRIu64
                   " with non-zero subcluster allocation bitmap, entry=0x%" PRIx64,
                   idx, e);
            ck->res->corruptions++;
            return;
        }
        qcow2__compressed_range(img, e, &coff, &clen);
        count_range(ck, coff, clen, false);
        if (active) {
            ck->res->allocated_clusters++;
            ck->res->compressed_clusters++;
            ck->res->fragmented_clusters++;
        }
        return;
    }
    if (e & (QCOW2_L2E_STD_RESERVED_MASK | (img->extl2 ? QCOW2_OFLAG_ZERO : 0))) {
        report(ck, true,
               "ERROR L2 entry %" PRIu64 " of table 0x%" PRIx64
               " has reserved bits set: 0x%016" PRIx64,
               idx, l2_off, e);
        ck->res->corruptions++;
    }
    if (!img->extl2 && (e & QCOW2_OFLAG_ZERO) && img->hdr.version < 3) {
        report(ck, true,
               "ERROR L2 entry %" PRIu64 " of table 0x%" PRIx64
               " is a zero cluster in a version 2 image",
               idx, l2_off);
        ck->res->corruptions++;
    }
    if (!host) {
        if (img->extl2 && (uint32_t)bm) {
            report(ck, true, "ERROR: Unallocated cluster has non-zero subcluster allocation bitmap");
            ck->res->corruptions++;
        }
        return;
    }
    /* Standard or zero-allocated: a host cluster is in use. */
    if (img->extl2 && ((bm >> 32) & bm)) {
        report(ck, true,
               "ERROR offset=%" PRIx64
               ": Allocated cluster has corrupted subcluster allocation bitmap",
               host);
        ck->res->corruptions++;
    }
    if (active) {
        ck->res->allocated_clusters++;
        if (ck->next_contig && host != ck->next_contig)
            ck->res->fragmented_clusters++;
        ck->next_contig = host + img->cluster_size;
    }
    if (host & (img->cluster_size - 1)) {
        bool data = img->extl2 ? (uint32_t)bm != 0 : !(e & QCOW2_OFLAG_ZERO);
        report(ck, true,
               "ERROR offset=%" PRIx64 ": %s cluster is not properly aligned; L2 entry corrupted.",
               host, data ? "Data" : "Preallocated");
        ck->res->corruptions++;
        return;
    }
    note_overlap(ck, "data cluster", host);
    if (active && queue_copy(ck, l2_off, idx, host)) {
        report(ck, false,
               "Copying cluster 0x%" PRIx64 " (L2 table 0x%" PRIx64 " entry %" PRIu64
               "): it is referenced more often than %u-bit refcounts can count",
               host, l2_off, idx, img->refcount_bits);
        return;
    }
    count_range(ck, host, img->cluster_size, false);
}

/* Read one whole table cluster (validated to lie in the file). */
static int read_cluster(struct check *ck, uint64_t off)
{
    qcow2_image *img = ck->img;
    int rc = qcow2__io_read(img->io, img->name, ck->buf, (size_t)img->cluster_size, off);

    if (rc)
        ck->res->check_errors++;
    return rc;
}

/*
 * Repair an L1 entry (of the active table, snap < 0, or of snapshot snap)
 * whose L2 table lies on other metadata (a refcount block, say): what it
 * maps is that metadata read as L2 entries, and a write through it would
 * overwrite the metadata. The entry is cleared and the guest range it
 * covered is reported as lost.
 */
static int drop_l1_entry(struct check *ck, int64_t snap, uint64_t l1_idx, uint64_t l2_off)
{
    qcow2_image *img = ck->img;
    uint64_t span = 1ull << (img->cluster_bits + img->l2_bits);
    int rc = 0;

    if (snap < 0) {
        img->l1[l1_idx] = 0;
        img->l1_dirty = true;
        qcow2__mapping_changed(img);
        report(ck, false,
               "Repairing L1 entry %" PRIu64 ": its L2 table at 0x%" PRIx64
               " is other metadata; guest bytes 0x%" PRIx64 "..0x%" PRIx64
               " are lost (they read as zeroes or from the backing file now)",
               l1_idx, l2_off, l1_idx * span, (l1_idx + 1) * span - 1);
    } else {
        const struct qcow2__snapshot *sn = &img->snaps[snap];
        uint8_t zero[8] = {0};

        rc = qcow2__io_write(img->io, img->name, zero, sizeof(zero), sn->l1_off + l1_idx * 8);
        if (rc)
            return rc;
        report(ck, false,
               "Repairing L1 entry %" PRIu64 " of snapshot %s (%s): its L2 table at 0x%" PRIx64
               " is other metadata; the snapshot's guest bytes 0x%" PRIx64 "..0x%" PRIx64
               " are lost",
               l1_idx, sn->id, sn->name, l2_off, l1_idx * span, (l1_idx + 1) * span - 1);
    }
    ck->res->corruptions_fixed++;
    ck->fixed++;
    return rc;
}

/* The L2 table an L1 entry points at: count it and everything it maps. */
static int check_l2(struct check *ck, int64_t snap, uint64_t l1_idx, uint64_t l1e, bool active)
{
    qcow2_image *img = ck->img;
    uint64_t l2_off = l1e & QCOW2_L1E_OFFSET_MASK;
    bool counted;
    int rc;

    if (l1e & QCOW2_L1E_RESERVED_MASK) {
        report(ck, true, "ERROR L1 entry %" PRIu64 " has reserved bits set: 0x%016" PRIx64, l1_idx,
               l1e);
        ck->res->corruptions++;
    }
    if (!l2_off)
        return 0;
    note_overlap(ck, "L2 table", l2_off);
    if (is_meta(ck, l2_off >> img->cluster_bits) && !(l2_off & (img->cluster_size - 1)) &&
        (ck->fix & QCOW2_CHECK_FIX_ERRORS) && !ck->for_rebuild)
        return drop_l1_entry(ck, snap, l1_idx, l2_off);
    counted = count_range(ck, l2_off, img->cluster_size, false);
    if (l2_off & (img->cluster_size - 1)) {
        report(ck, true, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry corrupted",
               l2_off);
        ck->res->corruptions++;
        return 0;
    }
    if (!qcow2__in_range(l2_off, img->cluster_size, ck->file_size)) {
        if (counted) {
            report(ck, true,
                   "ERROR l2_offset=%" PRIx64 ": L2 table lies beyond the end of the file",
                   l2_off);
            ck->res->corruptions++;
        }
        return 0;
    }
    rc = read_cluster(ck, l2_off);
    if (rc)
        return rc;
    ck->next_contig = 0;
    for (uint64_t i = 0; i < img->l2_entries; i++) {
        const uint8_t *p = ck->buf + i * img->l2e_bytes;
        uint64_t e = qcow2__be64(p), bm = img->extl2 ? qcow2__be64(p + 8) : 0;

        check_l2_entry(ck, l2_off, i, e, bm, active);
    }
    return 0;
}

/* A snapshot's L1 table, read a cluster at a time from the file. */
static int check_snapshot_l1(struct check *ck, uint32_t si)
{
    qcow2_image *img = ck->img;
    const struct qcow2__snapshot *sn = &img->snaps[si];
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    uint64_t per = img->cluster_size / 8;
    uint8_t *chunk;
    int rc = 0;

    if (sn->l1_off & (img->cluster_size - 1)) {
        report(ck, true,
               "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
               ": L1 table is not cluster aligned; snapshot table entry corrupted",
               sn->id, sn->name, sn->l1_off);
        ck->res->corruptions++;
        return 0;
    }
    if (bytes > QCOW2_MAX_L1_BYTES) {
        report(ck, true,
               "ERROR snapshot %s (%s) l1_size=%#" PRIx32
               ": L1 table is too large; snapshot table entry corrupted",
               sn->id, sn->name, sn->l1_size);
        ck->res->corruptions++;
        return 0;
    }
    if (!count_range(ck, sn->l1_off, bytes, true) ||
        !qcow2__in_range(sn->l1_off, bytes, ck->file_size))
        return 0;
    chunk = qcow2__malloc((size_t)img->cluster_size);
    if (!chunk)
        return qcow2__nomem();
    for (uint64_t i = 0; i < sn->l1_size && !rc; i += per) {
        uint64_t n = qcow2__min(per, sn->l1_size - i);

        rc = qcow2__io_read(img->io, img->name, chunk, (size_t)(n * 8), sn->l1_off + i * 8);
        if (rc) {
            ck->res->check_errors++;
            break;
        }
        for (uint64_t j = 0; j < n && !rc; j++)
            rc = check_l2(ck, si, i + j, qcow2__be64(chunk + j * 8), false);
    }
    qcow2__free(chunk);
    return rc;
}

/*
 * The bitmaps extension (only when autoclear bit 0 says it is consistent;
 * otherwise qemu ignores it too): directory, bitmap tables, data clusters.
 * Everything is hostile input: a bad value is one corruption, and the walk
 * stops where it cannot go on safely.
 */
static int check_bitmaps(struct check *ck)
{
    qcow2_image *img = ck->img;
    const uint8_t *ext = img->bitmaps_ext;
    uint64_t dir_size, dir_off, pos = 0;
    uint32_t nb;
    uint8_t *dir = NULL;
    int rc = 0;

    if (!ext || img->bitmaps_ext_len < 24 || !(img->hdr.autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    nb = qcow2__be32(ext);
    dir_size = qcow2__be64(ext + 8);
    dir_off = qcow2__be64(ext + 16);
    if (nb == 0)
        return 0;
    count_range(ck, dir_off, dir_size, true);
    if (nb > QCOW2_MAX_BITMAPS || dir_size > BITMAP_DIR_MAX_BYTES ||
        (dir_off & (img->cluster_size - 1)) ||
        dir_size < (uint64_t)nb * BITMAP_ENTRY_LEN ||
        !qcow2__in_range(dir_off, dir_size, ck->file_size)) {
        report(ck, true,
               "ERROR bitmap directory at 0x%" PRIx64 " (%" PRIu64 " bytes, %" PRIu32
               " bitmaps) is invalid",
               dir_off, dir_size, nb);
        ck->res->corruptions++;
        return 0;
    }
    dir = qcow2__malloc((size_t)dir_size);
    if (!dir)
        return qcow2__nomem();
    rc = qcow2__io_read(img->io, img->name, dir, (size_t)dir_size, dir_off);
    if (rc) {
        ck->res->check_errors++;
        goto out;
    }
    for (uint32_t b = 0; b < nb; b++) {
        const uint8_t *p = dir + pos;
        uint64_t t_off, t_size, entry_len;
        uint32_t extra_len, name_len;

        if (pos + BITMAP_ENTRY_LEN > dir_size)
            goto bad_dir;
        t_off = qcow2__be64(p);
        t_size = qcow2__be32(p + 8);
        name_len = qcow2__be16(p + 18);
        extra_len = qcow2__be32(p + 20);
        entry_len = qcow2__align_up(BITMAP_ENTRY_LEN + (uint64_t)extra_len + name_len, 8);
        if (name_len == 0 || name_len > BITMAP_NAME_MAX || entry_len > dir_size - pos)
            goto bad_dir;
        pos += entry_len;
        if ((t_off & (img->cluster_size - 1)) || t_size > BITMAP_TABLE_MAX_ENTRIES ||
            (t_size && !t_off)) {
            report(ck, true,
                   "ERROR bitmap %" PRIu32 ": table at 0x%" PRIx64 " (%" PRIu64
                   " entries) is invalid",
                   b, t_off, t_size);
            ck->res->corruptions++;
            continue;
        }
        if (!count_range(ck, t_off, t_size * 8, true) ||
            !qcow2__in_range(t_off, t_size * 8, ck->file_size))
            continue;
        for (uint64_t i = 0; i < t_size; i += img->cluster_size / 8) {
            uint64_t n = qcow2__min(img->cluster_size / 8, t_size - i);

            rc = qcow2__io_read(img->io, img->name, ck->buf, (size_t)(n * 8), t_off + i * 8);
            if (rc) {
                ck->res->check_errors++;
                goto out;
            }
            for (uint64_t j = 0; j < n; j++) {
                uint64_t e = qcow2__be64(ck->buf + j * 8), off = e & BME_OFFSET_MASK;

                if ((e & BME_RESERVED_MASK) ||
                    (off && ((e & BME_ALL_ONES) || (off & (img->cluster_size - 1))))) {
                    report(ck, true,
                           "ERROR bitmap %" PRIu32 " table entry %" PRIu64
                           " is invalid: 0x%016" PRIx64,
                           b, i + j, e);
                    ck->res->corruptions++;
                    continue;
                }
                if (off)
                    count_range(ck, off, img->cluster_size, true);
            }
        }
    }
    goto out;
bad_dir:
    report(ck, true, "ERROR bitmap directory at 0x%" PRIx64 " has a malformed entry", dir_off);
    ck->res->corruptions++;
out:
    qcow2__free(dir);
    return rc;
}

/*
 * Clusters in use in a group that has no refcount block (an emptied refcount
 * table entry): their refcounts are gone, and a block for the group placed
 * anywhere could land on them. Only a rebuild places one safely.
 */
static void find_lost_groups(struct check *ck)
{
    qcow2_image *img = ck->img;
    uint64_t pb = img->cluster_size * 8 / img->refcount_bits;

    for (uint64_t c = 0; c < ck->nb_clusters; c++) {
        uint64_t g = c / pb;
        if (!ck->refs[c])
            continue;
        if (g < img->rt_entries && (img->reftable[g] & QCOW2_REFT_OFFSET_MASK))
            continue;
        ck->need_rebuild = true;
        return;
    }
}

/*
 * Count every reference. Fixed metadata first (so that L2 tables and data
 * landing on it can be named), then the active tree, then the snapshots'.
 */
static int count_all(struct check *ck)
{
    qcow2_image *img = ck->img;
    int rc;

    count_range(ck, 0, img->cluster_size, true);
    if (img->rt_broken) {
        report(ck, true,
               "ERROR refcount table at 0x%" PRIx64 " (%" PRIu32
               " clusters) is unusable: it is empty, misaligned, outside the file or "
               "overlaps the L1 table",
               img->hdr.rt_off, img->hdr.rt_clusters);
        /* qemu cannot read refcounts through a misaligned table (a failed check); the
         * other cases read as zeroes there (corruptions). */
        if (img->hdr.rt_off & (img->cluster_size - 1))
            ck->res->check_errors++;
        else
            ck->res->corruptions++;
        ck->need_rebuild = true;
    } else if (!ck->for_rebuild) {
        count_range(ck, img->hdr.rt_off, (uint64_t)img->hdr.rt_clusters * img->cluster_size,
                    true);
    }
    for (uint64_t i = 0; i < img->rt_entries && !ck->for_rebuild; i++) {
        uint64_t e = img->reftable[i], off = e & QCOW2_REFT_OFFSET_MASK;

        if (e & QCOW2_REFT_RESERVED_MASK) {
            report(ck, true, "ERROR refcount table entry %" PRIu64 " has reserved bits set", i);
            ck->res->corruptions++;
            ck->need_rebuild = true;
            continue;
        }
        if (off & (img->cluster_size - 1)) {
            report(ck, true,
                   "ERROR refcount block %" PRIu64
                   " is not cluster aligned; refcount table entry corrupted",
                   i);
            ck->res->corruptions++;
            ck->need_rebuild = true;
            continue;
        }
        if (off && (off >> img->cluster_bits) >= (ck->file_size + img->cluster_size - 1) >>
                                                     img->cluster_bits) {
            report(ck, true, "ERROR refcount block %" PRIu64 " is outside image", i);
            ck->res->corruptions++;
            ck->need_rebuild = true;
            continue;
        }
        if (off)
            count_range(ck, off, img->cluster_size, true);
    }
    if (img->nb_snaps)
        count_range(ck, img->hdr.snap_off, snapshot_table_bytes(img), true);
    count_range(ck, img->hdr.l1_off, (uint64_t)img->hdr.l1_size * 8, true);
    rc = check_bitmaps(ck);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < img->hdr.l1_size; i++) {
        rc = check_l2(ck, -1, i, img->l1[i], true);
        if (rc)
            return rc;
    }
    for (uint32_t s = 0; s < img->nb_snaps; s++) {
        rc = check_snapshot_l1(ck, s);
        if (rc)
            return rc;
    }
    /* A refcount block referenced more than once overlaps something (qemu's check). */
    for (uint64_t i = 0; i < img->rt_entries && !ck->for_rebuild; i++) {
        uint64_t e = img->reftable[i], off = e & QCOW2_REFT_OFFSET_MASK, c = off >> img->cluster_bits;

        if (!off || (e & QCOW2_REFT_RESERVED_MASK) || (off & (img->cluster_size - 1)) ||
            c >= ck->nb_clusters || ck->refs[c] == 1)
            continue;
        report(ck, true, "ERROR refcount block %" PRIu64 " refcount=%u", i, (unsigned)ck->refs[c]);
        ck->res->corruptions++;
        ck->need_rebuild = true;
    }
    if (!ck->for_rebuild)
        find_lost_groups(ck);
    return 0;
}

/* True for failures that concern one cluster's refcount, not the check as a whole. */
static bool local_failure(int rc)
{
    return QCOW2_ERROR_CLASS(rc) == QCOW2_ECORRUPT;
}

/*
 * True when cluster c's refcount block entry was reported already and qemu
 * would still read a refcount there: the block lies past the end of the
 * file (zeroes), or the entry has reserved bits set. Counted as refcount 0.
 */
static bool block_past_eof(const struct check *ck, uint64_t c)
{
    const qcow2_image *img = ck->img;
    uint64_t g = c / (img->cluster_size * 8 / img->refcount_bits), e, off;

    if (g >= img->rt_entries)
        return false;
    e = img->reftable[g];
    off = e & QCOW2_REFT_OFFSET_MASK;
    if (off & (img->cluster_size - 1))
        return false;
    return (e & QCOW2_REFT_RESERVED_MASK) ||
           (off && !qcow2__in_range(off, img->cluster_size, ck->file_size));
}

/* Compare the counts with the refcounts on disk, fixing what fix allows. */
static int compare_refcounts(struct check *ck, uint64_t *highest)
{
    qcow2_image *img = ck->img;
    uint64_t range = qcow2__max(ck->hi_cluster, (ck->file_size + img->cluster_size - 1) >>
                                                    img->cluster_bits);

    /* Fixing: every finding first, then the repairs, in qemu-img's order. */
    bool listed = ck->fix && !ck->quiet && ck->res->report;

    for (uint64_t c = 0; listed && c < range; c++) {
        uint64_t r1, r2 = ck->refs[c];
        int rc = qcow2__refcount_get(img, c, &r1);

        if (rc && local_failure(rc) && block_past_eof(ck, c)) {
            rc = 0;
            r1 = 0;
        }
        if (rc || r1 == r2 || (r2 == REF_SATURATED && r1 > r2))
            continue;
        report(ck, true, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
               r1 < r2 ? "ERROR" : "Leaked", c, r1, r2);
    }
    *highest = 0;
    for (uint64_t c = 0; c < range; c++) {
        uint64_t r1, r2 = ck->refs[c];
        uint64_t *fixed = NULL;
        int rc = qcow2__refcount_get(img, c, &r1);

        if (rc && local_failure(rc) && block_past_eof(ck, c)) {
            rc = 0; /* already reported; qemu reads it as zeroes */
            r1 = 0;
        }
        if (rc) {
            if (!local_failure(rc))
                return rc;
            report(ck, true, "Can't get refcount for cluster %" PRIu64 ": %s", c,
                   qcow2_strerror(rc));
            ck->res->check_errors++;
            continue;
        }
        if (r1 || r2)
            *highest = c;
        if (r1 == r2 || (r2 == REF_SATURATED && r1 > r2))
            continue;
        if (r1 > r2 && (ck->fix & QCOW2_CHECK_FIX_LEAKS))
            fixed = &ck->res->leaks_fixed;
        else if (r1 < r2 && (ck->fix & QCOW2_CHECK_FIX_ERRORS))
            fixed = &ck->res->corruptions_fixed;
        /* The finding as qemu-img words it (listed above when fixing), then the repair. */
        if (!listed)
            report(ck, true, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
                   r1 < r2 ? "ERROR" : "Leaked", c, r1, r2);
        if (fixed)
            report(ck, false, "Repairing cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
                   c, r1, r2);
        if (fixed) {
            rc = qcow2__refcount_set(img, c, r2);
            if (!rc) {
                (*fixed)++;
                ck->fixed++;
                continue;
            }
            if (!local_failure(rc))
                return rc;
            report(ck, false, "ERROR could not repair cluster %" PRIu64 ": %s", c,
                   qcow2_error_last()->message);
        }
        if (r1 < r2)
            ck->res->corruptions++;
        else
            ck->res->leaks++;
    }
    return 0;
}

/*
 * COPIED flags of the active tree against the (repaired) refcounts. Repaired
 * with FIX_ERRORS, or with FIX_LEAKS alone when nothing else is wrong (as
 * qemu does).
 */
static int check_copied(struct check *ck)
{
    qcow2_image *img = ck->img;
    qcow2_check_result *res = ck->res;
    bool repair = (ck->fix & QCOW2_CHECK_FIX_ERRORS) ||
                  ((ck->fix & QCOW2_CHECK_FIX_LEAKS) && !res->check_errors && !res->corruptions &&
                   !res->leaks);
    int rc;

    for (uint64_t i = 0; i < img->hdr.l1_size; i++) {
        uint64_t l1e = img->l1[i], l2_off = l1e & QCOW2_L1E_OFFSET_MASK, r;

        if (!l2_off || (l2_off & (img->cluster_size - 1)) ||
            !qcow2__in_range(l2_off, img->cluster_size, ck->file_size))
            continue;
        rc = qcow2__refcount_get(img, l2_off >> img->cluster_bits, &r);
        if (rc) {
            if (!local_failure(rc))
                return rc;
            continue;
        }
        if ((r == 1) != ((l1e & QCOW2_OFLAG_COPIED) != 0)) {
            report(ck, !repair,
                   "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu64 " l1_entry=%" PRIx64
                   " refcount=%" PRIu64,
                   repair ? "Repairing" : "ERROR", i, l1e, r);
            if (repair) {
                img->l1[i] = r == 1 ? l1e | QCOW2_OFLAG_COPIED : l1e & ~QCOW2_OFLAG_COPIED;
                img->l1_dirty = true;
                res->corruptions_fixed++;
                ck->fixed++;
            } else {
                res->corruptions++;
            }
        }
        rc = read_cluster(ck, l2_off);
        if (rc)
            return rc;
        for (uint64_t j = 0; j < img->l2_entries; j++) {
            uint64_t e = qcow2__be64(ck->buf + j * img->l2e_bytes);
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            struct qcow2__cslot *slot;

            if ((e & QCOW2_OFLAG_COMPRESSED) || !host)
                continue;
            rc = qcow2__refcount_get(img, host >> img->cluster_bits, &r);
            if (rc) {
                if (!local_failure(rc))
                    return rc;
                continue;
            }
            if ((r == 1) == ((e & QCOW2_OFLAG_COPIED) != 0))
                continue;
            report(ck, !repair, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%" PRIu64,
                   repair ? "Repairing" : "ERROR", e, r);
            if (!repair) {
                res->corruptions++;
                continue;
            }
            /* The cache holds what the file holds (flushed), plus this pass's fixes. */
            rc = qcow2__cache_get(img, &img->l2c, l2_off, true, &slot);
            if (rc)
                return rc;
            qcow2__put_be64(slot->data + j * img->l2e_bytes,
                            r == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED);
            slot->dirty = true;
            res->corruptions_fixed++;
            ck->fixed++;
        }
    }
    return 0;
}

/*
 * Give each queued L2 entry a copy of the data cluster it shares (refcount
 * width exceeded): new cluster, same bytes, the entry repointed and owned.
 */
static int make_copies(struct check *ck)
{
    qcow2_image *img = ck->img;
    uint8_t *data;
    int rc = 0;

    if (!ck->nb_copies)
        return 0;
    data = qcow2__malloc((size_t)img->cluster_size);
    if (!data)
        return qcow2__nomem();
    for (size_t i = 0; i < ck->nb_copies && !rc; i++) {
        const struct copy_req *q = &ck->copies[i];
        struct qcow2__cslot *slot;
        uint64_t new_off, e;

        rc = qcow2__io_read(img->io, img->name, data, (size_t)img->cluster_size, q->host);
        if (!rc)
            rc = qcow2__alloc_clusters(img, 1, &new_off);
        if (!rc)
            rc = qcow2__io_write(img->io, img->name, data, (size_t)img->cluster_size, new_off);
        if (!rc)
            rc = qcow2__sync(img); /* the copy is durable before the entry points at it */
        if (!rc)
            rc = qcow2__cache_get(img, &img->l2c, q->l2_off, true, &slot);
        if (rc)
            break;
        e = qcow2__be64(slot->data + q->idx * img->l2e_bytes);
        if ((e & QCOW2_L2E_OFFSET_MASK) != q->host)
            continue;
        e = (e & ~QCOW2_L2E_OFFSET_MASK) | new_off | QCOW2_OFLAG_COPIED;
        qcow2__put_be64(slot->data + q->idx * img->l2e_bytes, e);
        slot->dirty = true;
        ck->res->corruptions_fixed++;
        ck->fixed++;
    }
    qcow2__free(data);
    if (rc && local_failure(rc)) {
        report(ck, false, "ERROR could not copy a shared cluster: %s", qcow2_error_last()->message);
        ck->res->corruptions++;
        rc = 0;
    }
    return rc;
}

/*
 * Rebuild the refcount structure from scratch (qemu's "Rebuilding refcount
 * structure"), for a refcount table or blocks that cannot be repaired in
 * place. References are counted without the old structure; a new refcount
 * table and blocks covering every cluster go past the end of the file, are
 * written and flushed, and then one header write switches to them. The old
 * table and blocks are then referenced by nothing: their clusters are free.
 * Nothing the guest sees moves.
 */
static int rebuild_refcounts(struct check *ck)
{
    qcow2_image *img = ck->img;
    uint64_t cs = img->cluster_size, pb = cs * 8 / img->refcount_bits;
    uint64_t used, nb_blocks = 0, t = 0, end;
    uint64_t *table = NULL;
    uint8_t *blk = NULL;
    qcow2_check_result res;
    int rc;

    memset(&res, 0, sizeof(res));
    ck->res = &res;
    ck->for_rebuild = true;
    ck->quiet = true;
    rc = qcow2__io_size(img->io, img->name, &ck->file_size);
    if (rc)
        goto out;
    ck->nb_clusters = ((ck->file_size + cs - 1) >> img->cluster_bits) + 1;
    ck->refs = qcow2__calloc((size_t)ck->nb_clusters, sizeof(uint16_t));
    ck->meta = qcow2__calloc((size_t)(ck->nb_clusters + 7) / 8, 1);
    if (!ck->refs || !ck->meta) {
        rc = qcow2__nomem();
        goto out;
    }
    ck->hi_cluster = 0;
    rc = count_all(ck);
    if (rc)
        goto out;
    for (uint64_t c = 0; c < ck->nb_clusters; c++) {
        if (ck->refs[c] == REF_SATURATED && refcount_max(img) > REF_SATURATED) {
            rc = qcow2__corrupt(img, "cluster %" PRIu64 " has too many references to rebuild its "
                                "refcount", c);
            goto out;
        }
    }
    /* The new structure starts past the file and past every reference. */
    used = qcow2__max((ck->file_size + cs - 1) >> img->cluster_bits, ck->hi_cluster);
    for (;;) {
        uint64_t nb2, t2;
        end = used + nb_blocks + t;
        nb2 = (end + pb - 1) / pb;
        t2 = (nb2 * 8 + cs - 1) / cs;
        if (nb2 == nb_blocks && t2 == t)
            break;
        nb_blocks = nb2;
        t = t2;
    }
    if (t * cs > QCOW2_MAX_REFTABLE_BYTES || (end << img->cluster_bits) > QCOW2_MAX_HOST_OFFSET) {
        rc = qcow2__err(QCOW2_ENOSPC, 0, img->name, "the rebuilt refcount table would be too large");
        goto out;
    }
    table = qcow2__calloc((size_t)(t * cs / 8), sizeof(uint64_t));
    blk = qcow2__malloc((size_t)cs);
    if (!table || !blk) {
        rc = qcow2__nomem();
        goto out;
    }
    for (uint64_t b = 0; b < nb_blocks && !rc; b++) {
        memset(blk, 0, (size_t)cs);
        for (uint64_t i = 0; i < pb; i++) {
            uint64_t c = b * pb + i, v;
            if (c >= end)
                break;
            v = c < used ? (c < ck->nb_clusters ? ck->refs[c] : 0) : 1;
            v = qcow2__min(v, refcount_max(img));
            if (v)
                qcow2__refcount_put(img, blk, i, v);
        }
        table[b] = (used + b) << img->cluster_bits;
        rc = qcow2__io_write(img->io, img->name, blk, (size_t)cs, table[b]);
    }
    if (rc)
        goto out;
    {
        uint8_t *raw = (uint8_t *)blk;
        for (uint64_t k = 0; k < t && !rc; k++) {
            memset(raw, 0, (size_t)cs);
            for (uint64_t i = 0; i < cs / 8; i++)
                qcow2__put_be64(raw + i * 8, table[k * (cs / 8) + i]);
            rc = qcow2__io_write(img->io, img->name, raw, (size_t)cs,
                                 (used + nb_blocks + k) << img->cluster_bits);
        }
    }
    if (!rc)
        rc = qcow2__sync(img); /* the new structure is complete before the header points at it */
    if (rc)
        goto out;
    /* Switch: from here the handle works with the new table. */
    for (uint64_t i = 0; i < img->rt_entries; i++)
        qcow2__cache_drop(&img->rbc, img->reftable[i] & QCOW2_REFT_OFFSET_MASK);
    qcow2__free(img->reftable);
    img->reftable = table;
    table = NULL;
    img->rt_entries = t * cs / 8;
    img->rt_broken = false;
    img->rt_dirty = false;
    img->hdr.rt_off = (used + nb_blocks) << img->cluster_bits;
    img->hdr.rt_clusters = (uint32_t)t;
    img->alloc_end = end;
    img->free_hint = 0;
    img->file_size = qcow2__max(img->file_size, end << img->cluster_bits);
    img->meta_gen++;
    rc = qcow2__header_write(img);
out:
    qcow2__free(ck->refs);
    qcow2__free(ck->meta);
    ck->refs = NULL;
    ck->meta = NULL;
    ck->for_rebuild = false;
    qcow2__free(table);
    qcow2__free(blk);
    return rc;
}

/* One pass: count, compare (and fix), COPIED (and fix), figures. */
static int check_pass(struct check *ck)
{
    qcow2_image *img = ck->img;
    uint64_t highest;
    int rc;

    rc = qcow2__io_size(img->io, img->name, &ck->file_size);
    if (rc)
        return rc;
    ck->nb_clusters = ((ck->file_size + img->cluster_size - 1) >> img->cluster_bits) + 1;
    if (ck->nb_clusters > QCOW2_CHECK_MAX_CLUSTERS)
        return qcow2__err(QCOW2_ENOMEM, 0, img->name,
                          "file has %" PRIu64 " clusters; check handles at most %llu",
                          ck->nb_clusters, QCOW2_CHECK_MAX_CLUSTERS);
    ck->refs = qcow2__calloc((size_t)ck->nb_clusters, sizeof(uint16_t));
    ck->meta = qcow2__calloc((size_t)(ck->nb_clusters + 7) / 8, 1);
    if (!ck->refs || !ck->meta)
        return qcow2__nomem();
    ck->hi_cluster = 0;
    ck->fixed = 0;
    ck->res->total_clusters = (img->size + img->cluster_size - 1) >> img->cluster_bits;
    ck->need_rebuild = false;
    ck->nb_copies = 0;
    rc = count_all(ck);
    if (!rc && ck->need_rebuild && (ck->fix & QCOW2_CHECK_FIX_ERRORS)) {
        /* Report what is wrong, fix nothing here: the caller rebuilds (qemu's order). */
        unsigned fix = ck->fix;
        ck->fix = 0;
        rc = compare_refcounts(ck, &highest);
        ck->fix = fix;
        goto out;
    }
    if (!rc)
        rc = compare_refcounts(ck, &highest);
    if (!rc)
        rc = check_copied(ck);
    if (!rc)
        rc = make_copies(ck);
    if (!rc)
        ck->res->image_end_offset = (highest + 1) << img->cluster_bits;
out:
    qcow2__free(ck->refs);
    qcow2__free(ck->meta);
    ck->refs = NULL;
    ck->meta = NULL;
    return rc;
}

/* Clear the dirty and corrupt bits once a repair left no corruption. */
static int mark_clean(qcow2_image *img)
{
    uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;

    if (img->hdr.version < 3 || !(img->hdr.incompat & bits))
        return 0;
    img->hdr.incompat &= ~bits;
    return qcow2__header_write(img);
}

int qcow2_image_check(qcow2_image *img, unsigned fix, qcow2_check_result *out)
{
    struct check ck;
    qcow2_check_result sum;
    bool rebuilt = false;
    int rc;

    if (!img || !out || (fix & ~(unsigned)(QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS)))
        return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL,
                          "qcow2_image_check: bad argument");
    memset(&sum, 0, sizeof(sum));
    sum.report = out->report;
    sum.payload = out->payload;
    *out = sum;
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name, "only qcow2 images can be checked");
    if (fix) {
        /* Not qcow2__check_writable(): a repair is what a corrupt image is waiting for. */
        if (img->state == QCOW2__FATAL)
            return qcow2__err(QCOW2_EFATAL, 0, img->name,
                              "an earlier write failed; close and reopen the image");
        if (img->state != QCOW2__OPEN_RW)
            return qcow2__err(QCOW2_EREADONLY, 0, img->name,
                              "image is opened read-only; repair needs write access");
    }
    /* Check what the file holds: write back whatever this handle has dirty. */
    rc = qcow2__metadata_flush(img);
    if (!rc)
        rc = qcow2__refcount_table(img); /* read-only handles read it on first use */
    if (rc)
        return rc;
    memset(&ck, 0, sizeof(ck));
    ck.img = img;
    ck.fix = fix;
    img->repairing = fix != 0;
    ck.buf = qcow2__malloc((size_t)img->cluster_size);
    if (!ck.buf)
        return qcow2__nomem();
    for (int pass = 0; pass < CHECK_PASSES; pass++) {
        qcow2_check_result res;

        memset(&res, 0, sizeof(res));
        res.report = out->report;
        res.payload = out->payload;
        ck.res = &res;
        ck.quiet = pass > 0;
        ck.refs = NULL;
        ck.meta = NULL;
        rc = check_pass(&ck);
        if (!rc && ck.need_rebuild && (fix & QCOW2_CHECK_FIX_ERRORS) && !rebuilt) {
            if (out->report)
                out->report("Rebuilding refcount structure", out->payload);
            rc = qcow2__metadata_flush(img);
            if (!rc)
                rc = rebuild_refcounts(&ck);
            ck.res = &res;
            rebuilt = true;
            if (!rc) {
                res.corruptions_fixed += qcow2__max(res.corruptions, 1);
                res.corruptions = 0;
                res.check_errors = 0;
                ck.fixed = 1;
            }
        } else if (!rc && ck.fixed) {
            rc = qcow2__metadata_flush(img);
        }
        sum.leaks_fixed += res.leaks_fixed;
        sum.corruptions_fixed += res.corruptions_fixed;
        res.leaks_fixed = sum.leaks_fixed;
        res.corruptions_fixed = sum.corruptions_fixed;
        *out = res;
        if (rc) {
            out->check_errors++;
            break;
        }
        if (!ck.fixed)
            break;
    }
    qcow2__free(ck.buf);
    qcow2__free(ck.copies);
    img->repairing = false;
    if (!rc && fix && !out->corruptions && !out->check_errors)
        rc = mark_clean(img);
    return rc;
}

int qcow2__repair_dirty(qcow2_image *img)
{
    qcow2_check_result res;
    int rc;

    memset(&res, 0, sizeof(res));
    rc = qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &res);
    if (!rc && res.check_errors)
        rc = qcow2__err(QCOW2_EIO, 0, img->name, "could not repair the dirty image's refcounts");
    return rc;
}
