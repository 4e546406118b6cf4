/*
 * Internal snapshots: the snapshot table (reference §1.7) parsed into
 * img->snaps at open, and the public read-only queries on it. image.c calls
 * qcow2__snapshots_load() once the header is parsed; the table is read
 * through the choke point in io.c. Creating, applying and deleting
 * snapshots (and the table written anew) is snap_edit.c.
 *
 * The table is hostile input. Before anything is allocated for it, its
 * entry count and byte length are held to qemu's caps (QCOW2_MAX_SNAPSHOTS,
 * QCOW2_MAX_SNAPSHOT_TABLE_BYTES, QCOW2_MAX_SNAPSHOT_EXTRA) and to the file
 * size; every entry's L1 table must be cluster aligned, at most
 * QCOW2_MAX_L1_BYTES and inside the file. Entries are variable-length, so
 * the table is read in growing pieces (doubling, at least 64 KiB), never
 * more than the table needs plus one piece, never past the cap.
 *
 * SNAPSHOT TABLE ENTRY (each padded to a multiple of 8 bytes)
 *   OFFSET SIZE DESCRIPTION
 *   0      8    L1 table offset (cluster aligned)
 *   8      4    L1 size, entries
 *   12     2    id string length
 *   14     2    name length
 *   16     4    date, seconds
 *   20     4    date, nanoseconds
 *   24     8    vm_clock_nsec
 *   32     4    vm_state_size (32-bit; superseded by extra bytes 0-7)
 *   36     4    extra_data_size
 *   40     var  extra data: 0-7 vm_state_size (64-bit), 8-15 disk size,
 *               16-23 icount; v3 needs at least 16 bytes; unknown bytes kept
 *   then the id string and the name, neither NUL-terminated
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "qcow2_int.h"

#define SNAP_READ_MIN (64u << 10)
#define SNAP_EXTRA_V3_MIN 16u

/* The part of the table read so far. */
struct snap_reader {
    qcow2_image *img;
    uint8_t *buf;   /* table bytes [0, have) */
    uint64_t have;  /* bytes read */
    uint64_t limit; /* readable: min(file end, cap) - table offset */
    bool file_end;  /* limit comes from the end of the file (else from the cap) */
};

/* Make sure table bytes [0, need) are in r->buf. */
static int snap_need(struct snap_reader *r, uint64_t need, uint32_t idx)
{
    qcow2_image *img = r->img;
    uint64_t want;
    uint8_t *nbuf;
    int rc;

    if (need <= r->have)
        return 0;
    if (need > r->limit) {
        if (r->file_end)
            return qcow2__corrupt(img,
                                  "snapshot table at 0x%" PRIx64 ": entry %u extends past the end "
                                  "of the file (0x%" PRIx64 ")",
                                  img->hdr.snap_off, idx, img->file_size);
        return qcow2__corrupt(img,
                              "snapshot table at 0x%" PRIx64 " is larger than %llu bytes "
                              "(entry %u)",
                              img->hdr.snap_off, (unsigned long long)QCOW2_MAX_SNAPSHOT_TABLE_BYTES,
                              idx);
    }
    want = qcow2__max(need, qcow2__max(r->have * 2, SNAP_READ_MIN));
    want = qcow2__min(want, r->limit);
    nbuf = qcow2__realloc(r->buf, (size_t)want);
    if (!nbuf)
        return qcow2__nomem();
    r->buf = nbuf;
    rc = qcow2__io_read(img->io, img->name, r->buf + r->have, (size_t)(want - r->have),
                        img->hdr.snap_off + r->have);
    if (rc)
        return rc;
    r->have = want;
    return 0;
}

void qcow2__snap_entry_free(struct qcow2__snapshot *sn)
{
    qcow2__free(sn->extra);
    qcow2__free(sn->id);
    qcow2__free(sn->name);
}

/* Check that snapshot idx's L1 table is a plausible table inside the file. */
static int snap_check_l1(qcow2_image *img, uint32_t idx, const struct qcow2__snapshot *sn)
{
    uint64_t l1_bytes = (uint64_t)sn->l1_size * 8u;

    if (l1_bytes > QCOW2_MAX_L1_BYTES)
        return qcow2__corrupt(img,
                              "snapshot %u: L1 table of %" PRIu32 " entries is larger than %llu "
                              "bytes",
                              idx, sn->l1_size, (unsigned long long)QCOW2_MAX_L1_BYTES);
    if (sn->l1_off & (img->cluster_size - 1))
        return qcow2__corrupt(img, "snapshot %u: L1 table offset 0x%" PRIx64 " is not cluster aligned",
                              idx, sn->l1_off);
    if (sn->l1_size && sn->l1_off == 0)
        return qcow2__corrupt(img, "snapshot %u: L1 table at 0x0 overlaps the header", idx);
    if (!qcow2__in_range(sn->l1_off, l1_bytes, img->file_size))
        return qcow2__corrupt(img,
                              "snapshot %u: L1 table at 0x%" PRIx64 " (%" PRIu32 " entries) "
                              "extends past the end of the file (0x%" PRIx64 "); refused, "
                              "where qemu reads zeroes",
                              idx, sn->l1_off, sn->l1_size, img->file_size);
    return 0;
}

/* Parse the entry at table offset *pos into sn and advance *pos past its padding. */
static int snap_parse_entry(struct snap_reader *r, uint64_t *pos, uint32_t idx,
                            struct qcow2__snapshot *sn)
{
    qcow2_image *img = r->img;
    const uint8_t *p;
    uint32_t vm_state32;
    uint16_t id_len, name_len;
    uint64_t entry_len;
    int rc;

    rc = snap_need(r, *pos + QCOW2__SNAP_HDR_LEN, idx);
    if (rc)
        return rc;
    p = r->buf + *pos;
    sn->l1_off = qcow2__be64(p);
    sn->l1_size = qcow2__be32(p + 8);
    id_len = qcow2__be16(p + 12);
    name_len = qcow2__be16(p + 14);
    sn->date_sec = qcow2__be32(p + 16);
    sn->date_nsec = qcow2__be32(p + 20);
    sn->vm_clock_nsec = qcow2__be64(p + 24);
    vm_state32 = qcow2__be32(p + 32);
    sn->extra_len = qcow2__be32(p + 36);

    if (sn->extra_len > QCOW2_MAX_SNAPSHOT_EXTRA)
        return qcow2__corrupt(img, "snapshot %u: extra data of %" PRIu32 " bytes exceeds %u",
                              idx, sn->extra_len, QCOW2_MAX_SNAPSHOT_EXTRA);
    if (img->hdr.version >= 3 && sn->extra_len < SNAP_EXTRA_V3_MIN)
        return qcow2__corrupt(img,
                              "snapshot %u: extra data of %" PRIu32 " bytes; version 3 needs at "
                              "least %u",
                              idx, sn->extra_len, SNAP_EXTRA_V3_MIN);
    entry_len = QCOW2__SNAP_HDR_LEN + (uint64_t)sn->extra_len + id_len + name_len;
    rc = snap_need(r, *pos + entry_len, idx);
    if (rc)
        return rc;
    p = r->buf + *pos + QCOW2__SNAP_HDR_LEN;

    if (sn->extra_len) {
        sn->extra = qcow2__malloc(sn->extra_len);
        if (!sn->extra)
            return qcow2__nomem();
        memcpy(sn->extra, p, sn->extra_len);
    }
    sn->vm_state_size = sn->extra_len >= 8 ? qcow2__be64(p) : vm_state32;
    sn->disk_size = sn->extra_len >= 16 ? qcow2__be64(p + 8) : img->size;
    sn->icount = sn->extra_len >= 24 ? (int64_t)qcow2__be64(p + 16) : -1;
    p += sn->extra_len;
    sn->id = qcow2__strndup((const char *)p, id_len);
    sn->name = qcow2__strndup((const char *)p + id_len, name_len);
    if (!sn->id || !sn->name)
        return qcow2__nomem();

    rc = snap_check_l1(img, idx, sn);
    /* A read-only check opens it anyway and reports it, as qemu-img check does. */
    if (rc && !((img->opts.flags & QCOW2_OPEN_CHECK) && img->state != QCOW2__OPEN_RW))
        return rc;
    *pos = qcow2__align_up(*pos + entry_len, 8);
    return 0;
}

int qcow2__snapshots_load(qcow2_image *img)
{
    struct snap_reader r = {0};
    struct qcow2__snapshot *snaps;
    uint32_t n = img->hdr.nb_snapshots;
    uint64_t table_off = img->hdr.snap_off;
    uint64_t pos = 0;
    uint32_t i;
    int rc;

    img->snaps = NULL;
    img->nb_snaps = 0;
    if (n == 0)
        return 0;
    if (n > QCOW2_MAX_SNAPSHOTS)
        return qcow2__corrupt(img, "snapshot table at 0x%" PRIx64 ": %" PRIu32
                                   " snapshots exceed the limit of %u",
                              table_off, n, QCOW2_MAX_SNAPSHOTS);
    if (table_off == 0 || (table_off & (img->cluster_size - 1)))
        return qcow2__corrupt(img, "snapshot table offset 0x%" PRIx64 " is %s", table_off,
                              table_off ? "not cluster aligned" : "inside the header cluster");
    /* Every entry is at least QCOW2__SNAP_HDR_LEN bytes: check the minimum before reading. */
    if ((uint64_t)n * QCOW2__SNAP_HDR_LEN > QCOW2_MAX_SNAPSHOT_TABLE_BYTES)
        return qcow2__corrupt(img, "snapshot table at 0x%" PRIx64 ": %" PRIu32
                                   " snapshots cannot fit in %llu bytes",
                              table_off, n, (unsigned long long)QCOW2_MAX_SNAPSHOT_TABLE_BYTES);
    if (!qcow2__in_range(table_off, (uint64_t)n * QCOW2__SNAP_HDR_LEN, img->file_size))
        return qcow2__corrupt(img,
                              "snapshot table at 0x%" PRIx64 " (%" PRIu32 " snapshots) extends "
                              "past the end of the file (0x%" PRIx64 ")",
                              table_off, n, img->file_size);

    r.img = img;
    r.file_end = img->file_size - table_off <= QCOW2_MAX_SNAPSHOT_TABLE_BYTES;
    r.limit = qcow2__min(img->file_size - table_off, QCOW2_MAX_SNAPSHOT_TABLE_BYTES);
    snaps = qcow2__calloc(n, sizeof(*snaps));
    if (!snaps)
        return qcow2__nomem();
    for (i = 0; i < n; i++) {
        rc = snap_parse_entry(&r, &pos, i, &snaps[i]);
        if (rc)
            goto out_free_snaps;
    }
    qcow2__free(r.buf);
    img->snaps = snaps;
    img->nb_snaps = n;
    return 0;

out_free_snaps:
    for (i = 0; i < n; i++)
        qcow2__snap_entry_free(&snaps[i]);
    qcow2__free(snaps);
    qcow2__free(r.buf);
    return rc;
}

void qcow2__snapshots_free(qcow2_image *img)
{
    uint32_t i;

    for (i = 0; i < img->nb_snaps; i++)
        qcow2__snap_entry_free(&img->snaps[i]);
    qcow2__free(img->snaps);
    img->snaps = NULL;
    img->nb_snaps = 0;
}

size_t qcow2_snapshot_count(const qcow2_image *img)
{
    return img && img->fmt == QCOW2_FORMAT_QCOW2 ? img->nb_snaps : 0;
}

int qcow2_snapshot_get(const qcow2_image *img, size_t i, qcow2_snapshot_info *out)
{
    const struct qcow2__snapshot *sn;

    if (!img || !out || i >= qcow2_snapshot_count(img))
        return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL,
                          "no internal snapshot number %zu (the image has %zu)", i,
                          qcow2_snapshot_count(img));
    sn = &img->snaps[i];
    out->id = sn->id;
    out->name = sn->name;
    out->l1_offset = sn->l1_off;
    out->l1_size = sn->l1_size;
    out->date_sec = sn->date_sec;
    out->date_nsec = sn->date_nsec;
    out->vm_clock_nsec = sn->vm_clock_nsec;
    out->vm_state_size = sn->vm_state_size;
    out->disk_size = sn->disk_size;
    out->icount = sn->icount;
    return 0;
}

/* Index of the snapshot whose id is s, else the first whose name is s (qemu's lookup). */
int qcow2__snap_find(const qcow2_image *img, const char *s, uint32_t *idx_out)
{
    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        if (strcmp(img->snaps[i].id, s) == 0) {
            *idx_out = i;
            return 0;
        }
    }
    for (uint32_t i = 0; i < img->nb_snaps; i++) {
        if (strcmp(img->snaps[i].name, s) == 0) {
            *idx_out = i;
            return 0;
        }
    }
    return qcow2__err(QCOW2_ENOTFOUND, 0, img->name, "snapshot '%s' not found", s);
}

int qcow2_snapshot_find(const qcow2_image *img, const char *snapshot, size_t *index_out)
{
    uint32_t idx;
    int rc;

    if (!img || !snapshot || !index_out)
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "qcow2_snapshot_find: missing argument");
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_ENOTFOUND, 0, img->name, "snapshot '%s' not found", snapshot);
    rc = qcow2__snap_find(img, snapshot, &idx);
    if (!rc)
        *index_out = idx;
    return rc;
}

/* Read an L1 table of n entries at off into a new native array (at least one entry). */
int qcow2__snap_read_l1(qcow2_image *img, uint64_t off, uint64_t n, uint64_t alloc_n,
                        uint64_t **out)
{
    uint64_t *l1;
    int rc;

    assert(alloc_n >= n);
    l1 = qcow2__calloc((size_t)qcow2__max(alloc_n, 1), sizeof(uint64_t));
    if (!l1)
        return qcow2__nomem();
    if (n) {
        rc = qcow2__io_read(img->io, img->name, l1, (size_t)(n * 8), off);
        if (rc) {
            qcow2__free(l1);
            return rc;
        }
        for (uint64_t i = 0; i < n; i++)
            l1[i] = qcow2__be64((const uint8_t *)&l1[i]);
    }
    *out = l1;
    return 0;
}

int qcow2_image_view_snapshot(qcow2_image *img, const char *snapshot)
{
    const struct qcow2__snapshot *sn;
    uint64_t *l1;
    uint32_t idx;
    int rc;

    if (!img || !snapshot)
        return qcow2__err(QCOW2_EINVAL, 0, img ? img->name : NULL, "missing argument");
    if (img->fmt != QCOW2_FORMAT_QCOW2)
        return qcow2__err(QCOW2_ENOTFOUND, 0, img->name, "snapshot '%s' not found", snapshot);
    if (img->state != QCOW2__OPEN_RO)
        return qcow2__err(QCOW2_EINVAL, 0, img->name,
                          "a snapshot can only be viewed through a read-only handle");
    rc = qcow2__snap_find(img, snapshot, &idx);
    if (rc)
        return rc;
    sn = &img->snaps[idx];
    if (sn->disk_size > QCOW2_MAX_VIRTUAL_SIZE)
        return qcow2__corrupt(img, "snapshot '%s' has a disk size of %" PRIu64 " bytes", sn->id,
                              sn->disk_size);
    rc = qcow2__snap_read_l1(img, sn->l1_off, sn->l1_size, sn->l1_size, &l1);
    if (rc)
        return rc;
    /* Entries are validated by the read path as they are used, like the active L1's. */
    qcow2__free(img->l1);
    img->l1 = l1;
    qcow2__mapping_changed(img);
    img->l1_alloc = qcow2__max(sn->l1_size, 1);
    img->hdr.l1_size = sn->l1_size;
    img->hdr.l1_off = sn->l1_off;
    img->hdr.size = sn->disk_size;
    img->size = sn->disk_size;
    img->dbuf_host_off = UINT64_MAX;
    return 0;
}

int qcow2_image_open_snapshot(qcow2_image **out, const char *path, const char *snapshot,
                              const qcow2_open_opts *opts)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    int rc;

    if (!out)
        return qcow2__err(QCOW2_EINVAL, 0, path, "qcow2_image_open_snapshot: missing argument");
    *out = NULL;
    if (opts) {
        if (opts->version != QCOW2_OPEN_OPTS_VERSION)
            return qcow2__err(QCOW2_EINVAL, 0, path, "unknown open options version %u",
                              opts->version);
        o = *opts;
    }
    o.flags &= ~(unsigned)QCOW2_OPEN_RDWR;
    rc = qcow2_image_open(out, path, &o);
    if (rc)
        return rc;
    rc = qcow2_image_view_snapshot(*out, snapshot);
    if (rc) {
        qcow2_image_close(*out);
        *out = NULL;
    }
    return rc;
}
