/*
 * The qcow2 header and its extensions: turns the bytes of cluster 0 into the
 * native struct qcow2__hdr and the image's extension fields, checking every
 * value before anything else uses it. image.c calls this at open; the writer
 * will serialize from the same native fields.
 */
#include <inttypes.h>
#include <stdio.h>

#include "qcow2_int.h"

const char *qcow2__feature_name(const qcow2_image *img, unsigned type, unsigned bit)
{
    for (uint32_t i = 0; i < img->nb_features; i++) {
        if (img->features[i].type == type && img->features[i].bit == bit)
            return img->features[i].name;
    }
    return NULL;
}

/* A one-line description of unknown incompatible bits, naming them when the table can. */
static int refuse_unknown_incompat(qcow2_image *img, uint64_t unknown)
{
    char list[256];
    size_t n = 0;

    list[0] = '\0';
    for (unsigned bit = 0; bit < 64 && n < sizeof(list) - 1; bit++) {
        const char *fname;
        int w;

        if (!(unknown & (1ull << bit)))
            continue;
        fname = qcow2__feature_name(img, 0, bit);
        if (fname && fname[0])
            w = snprintf(list + n, sizeof(list) - n, "%s'%s' (bit %u)", n ? ", " : "", fname, bit);
        else
            w = snprintf(list + n, sizeof(list) - n, "%sbit %u", n ? ", " : "", bit);
        if (w < 0)
            break;
        n = qcow2__min(n + (size_t)w, sizeof(list) - 1);
    }
    return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                      "unsupported incompatible feature: %s", list);
}

static int parse_feature_table(qcow2_image *img, const uint8_t *p, uint32_t len)
{
    uint32_t n = len / QCOW2_FEATURE_ENTRY_LEN;

    if (img->features)
        return qcow2__corrupt(img, "header extension 'feature name table' appears twice");
    img->features = qcow2__calloc(n, sizeof(*img->features));
    if (!img->features)
        return qcow2__nomem();
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = p + (size_t)i * QCOW2_FEATURE_ENTRY_LEN;
        struct qcow2__feature *f = &img->features[i];

        f->type = e[0];
        f->bit = e[1];
        memcpy(f->name, e + 2, 46);
        f->name[46] = '\0';
        /* Keep messages one printable line whatever the file says. */
        for (char *c = f->name; *c; c++) {
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
                *c = '?';
        }
    }
    img->nb_features = n;
    img->features_kept = true;
    return 0;
}

static int keep_unknown_ext(qcow2_image *img, uint32_t type, const uint8_t *p, uint32_t len)
{
    struct qcow2__ext *exts;
    struct qcow2__ext *e;

    exts = qcow2__realloc(img->exts, (img->nb_exts + 1) * sizeof(*exts));
    if (!exts)
        return qcow2__nomem();
    img->exts = exts;
    e = &exts[img->nb_exts];
    e->type = type;
    e->len = len;
    e->data = qcow2__malloc(len);
    if (!e->data)
        return qcow2__nomem();
    memcpy(e->data, p, len);
    img->nb_exts++;
    return 0;
}

/* A string extension: no NUL on disk; refuse embedded NULs so names stay names. */
static int ext_string(qcow2_image *img, const char *what, const uint8_t *p, uint32_t len,
                      char **out)
{
    if (*out)
        return qcow2__corrupt(img, "header extension '%s' appears twice", what);
    if (memchr(p, '\0', len))
        return qcow2__corrupt(img, "header extension '%s' contains a NUL byte", what);
    *out = qcow2__strndup((const char *)p, len);
    return *out ? 0 : qcow2__nomem();
}

/*
 * The bitmaps extension: u32 count, u32 reserved, u64 directory size, u64
 * directory offset. Bitmaps are kept verbatim, never interpreted, but a
 * damaged extension is refused as qemu refuses it.
 */
static int check_bitmaps_ext(qcow2_image *img, const uint8_t *p)
{
    uint32_t nb = qcow2__be32(p), reserved = qcow2__be32(p + 4);
    uint64_t dir_size = qcow2__be64(p + 8), dir_off = qcow2__be64(p + 16);

    if (nb == 0 || nb > QCOW2_MAX_BITMAPS)
        return qcow2__corrupt(img, "bitmaps extension: %" PRIu32 " bitmaps (1 to %u allowed)", nb,
                              QCOW2_MAX_BITMAPS);
    if (reserved)
        return qcow2__corrupt(img, "bitmaps extension: reserved field is not zero");
    if (dir_size == 0 || dir_size > 1024ull * QCOW2_MAX_BITMAPS)
        return qcow2__corrupt(img, "bitmaps extension: directory size %" PRIu64 " is invalid",
                              dir_size);
    if ((dir_off & ((1ull << img->cluster_bits) - 1)) || dir_off == 0 ||
        !qcow2__in_range(dir_off, dir_size, img->file_size))
        return qcow2__corrupt(img,
                              "bitmaps extension: directory at 0x%" PRIx64 " (%" PRIu64
                              " bytes) is misaligned or outside the file",
                              dir_off, dir_size);
    return 0;
}

/*
 * Walk the extension list from header_len to end (the backing name or the
 * end of cluster 0). Each entry must fit entirely before end.
 */
static int parse_extensions(qcow2_image *img, const uint8_t *buf, uint64_t start, uint64_t end)
{
    uint64_t off = start;
    char *data_file = NULL;
    int rc = 0;

    for (unsigned count = 0;; count++) {
        uint32_t type, len;
        uint64_t padded;
        const uint8_t *p;

        if (off + 8 > end) {
            /* qemu accepts a header that ends without the end marker when no room is left. */
            break;
        }
        type = qcow2__be32(buf + off);
        len = qcow2__be32(buf + off + 4);
        if (type == QCOW2_EXT_END) {
            off += 8; /* the marker is part of the area a rewrite must keep */
            break;
        }
        if (count >= QCOW2_MAX_EXTENSIONS) {
            rc = qcow2__corrupt(img, "more than %u header extensions", QCOW2_MAX_EXTENSIONS);
            goto out;
        }
        off += 8;
        if (len > end - off) {
            rc = qcow2__corrupt(img,
                                "header extension 0x%08" PRIx32 " at 0x%" PRIx64
                                ": length %" PRIu32 " runs past the end of the header area",
                                type, off - 8, len);
            goto out;
        }
        p = buf + off;
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            /* qemu takes the last one when there are several; a rewrite keeps one. */
            qcow2__free(img->backing_fmt);
            img->backing_fmt = NULL;
            rc = ext_string(img, "backing format", p, len, &img->backing_fmt);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            rc = parse_feature_table(img, p, len);
            break;
        case QCOW2_EXT_BITMAPS:
            if (img->bitmaps_ext) {
                rc = qcow2__corrupt(img, "header extension 'bitmaps' appears twice");
                break;
            }
            if (len < 24) {
                rc = qcow2__corrupt(img, "bitmaps extension is %" PRIu32 " bytes, expected 24",
                                    len);
                break;
            }
            img->bitmaps_ext = qcow2__malloc(len);
            if (!img->bitmaps_ext) {
                rc = qcow2__nomem();
                break;
            }
            memcpy(img->bitmaps_ext, p, len);
            img->bitmaps_ext_len = len;
            img->nb_bitmaps = qcow2__be32(p);
            rc = check_bitmaps_ext(img, p);
            break;
        case QCOW2_EXT_DATA_FILE:
            rc = ext_string(img, "external data file", p, len, &data_file);
            break;
        default:
            rc = keep_unknown_ext(img, type, p, len);
            break;
        }
        if (rc)
            goto out;
        padded = qcow2__align_up(len, 8);
        off += qcow2__min(padded, end - off);
    }
    img->ext_end = off;
out:
    qcow2__free(data_file);
    return rc;
}

static const char *crypt_name(uint32_t method)
{
    return method == 1 ? "AES" : method == 2 ? "LUKS" : "unknown";
}

/* [a, a+alen) and [b, b+blen) overlap; both are known not to overflow. */
static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

static int check_table(qcow2_image *img, const char *what, uint64_t off, uint64_t len)
{
    if (off & (img->cluster_size - 1))
        return qcow2__corrupt(img, "%s offset 0x%" PRIx64 " is not aligned to a cluster", what,
                              off);
    if (len && off == 0)
        return qcow2__corrupt(img, "%s at offset 0 overlaps the header", what);
    if (len && !qcow2__in_range(off, len, img->file_size))
        return qcow2__corrupt(img,
                              "%s at 0x%" PRIx64 " (%" PRIu64 " bytes) lies beyond the end of the "
                              "file (%" PRIu64 " bytes); refused, where qemu would read zeroes",
                              what, off, len, img->file_size);
    return 0;
}

/* The refcount table's header fields: size within the cap, aligned, in the file, clear of L1. */
static int check_reftable(qcow2_image *img, uint64_t l1_bytes)
{
    const struct qcow2__hdr *h = &img->hdr;
    uint64_t rt_bytes = 0;
    int rc;

    if (qcow2__mul_overflow(h->rt_clusters, img->cluster_size, &rt_bytes) ||
        rt_bytes > QCOW2_MAX_REFTABLE_BYTES)
        return qcow2__corrupt(img, "refcount table is %" PRIu32 " clusters (at most %llu bytes)",
                              h->rt_clusters, QCOW2_MAX_REFTABLE_BYTES);
    if (h->rt_clusters == 0)
        return qcow2__corrupt(img, "refcount table is empty");
    rc = check_table(img, "refcount table", h->rt_off, rt_bytes);
    if (rc)
        return rc;
    if (ranges_overlap(h->l1_off, l1_bytes, h->rt_off, rt_bytes))
        return qcow2__corrupt(img,
                              "L1 table at 0x%" PRIx64 " overlaps the refcount table at 0x%" PRIx64,
                              h->l1_off, h->rt_off);
    return 0;
}

int qcow2__header_parse(qcow2_image *img, const uint8_t *buf, size_t buf_len)
{
    struct qcow2__hdr *h = &img->hdr;
    uint64_t ext_area_end, l1_bytes, l1_need, per_l1;
    int rc;

    if (buf_len < QCOW2_V2_HEADER_LEN)
        return qcow2__corrupt(img, "file is too short for a qcow2 header (%zu bytes)", buf_len);
    if (qcow2__be32(buf) != QCOW2_MAGIC)
        return qcow2__corrupt(img, "bad magic: not a qcow2 image");
    h->version = qcow2__be32(buf + 4);
    if (h->version != 2 && h->version != 3)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name, "unsupported qcow2 version %" PRIu32,
                          h->version);
    h->backing_off = qcow2__be64(buf + 8);
    h->backing_len = qcow2__be32(buf + 16);
    h->cluster_bits = qcow2__be32(buf + 20);
    h->size = qcow2__be64(buf + 24);
    h->crypt_method = qcow2__be32(buf + 32);
    h->l1_size = qcow2__be32(buf + 36);
    h->l1_off = qcow2__be64(buf + 40);
    h->rt_off = qcow2__be64(buf + 48);
    h->rt_clusters = qcow2__be32(buf + 56);
    h->nb_snapshots = qcow2__be32(buf + 60);
    h->snap_off = qcow2__be64(buf + 64);

    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return qcow2__corrupt(img, "cluster_bits %" PRIu32 " is outside 9..21", h->cluster_bits);
    img->cluster_bits = h->cluster_bits;
    img->cluster_size = 1ull << h->cluster_bits;

    if (h->version == 2) {
        h->header_len = QCOW2_V2_HEADER_LEN;
        h->refcount_order = 4;
    } else {
        if (buf_len < QCOW2_V3_HEADER_MIN)
            return qcow2__corrupt(img, "file is too short for a qcow2 v3 header");
        h->incompat = qcow2__be64(buf + 72);
        h->compat = qcow2__be64(buf + 80);
        h->autoclear = qcow2__be64(buf + 88);
        h->refcount_order = qcow2__be32(buf + 96);
        h->header_len = qcow2__be32(buf + 100);
        if (h->header_len < QCOW2_V3_HEADER_MIN || (h->header_len & 7))
            return qcow2__corrupt(img,
                                  "header_length %" PRIu32 " is invalid (at least 104, a multiple "
                                  "of 8)",
                                  h->header_len);
        if (h->header_len > img->cluster_size || h->header_len > buf_len)
            return qcow2__corrupt(img, "header_length %" PRIu32 " exceeds the header cluster",
                                  h->header_len);
        if (h->header_len > 104)
            h->compression_type = buf[104];
        if (h->header_len > QCOW2_V3_HEADER_LEN) {
            h->tail_len = h->header_len - QCOW2_V3_HEADER_LEN;
            h->tail = qcow2__malloc(h->tail_len);
            if (!h->tail)
                return qcow2__nomem();
            memcpy(h->tail, buf + QCOW2_V3_HEADER_LEN, h->tail_len);
        }
    }
    if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
        return qcow2__corrupt(img, "refcount_order %" PRIu32 " is above 6 (64-bit refcounts)",
                              h->refcount_order);
    img->refcount_bits = 1u << h->refcount_order;

    /* Extensions end where the backing name starts, or at the end of cluster 0. */
    ext_area_end = qcow2__min(img->cluster_size, buf_len);
    if (h->backing_off) {
        if (h->backing_len > QCOW2_MAX_BACKING_NAME)
            return qcow2__corrupt(img, "backing file name is %" PRIu32 " bytes (at most 1023)",
                                  h->backing_len);
        if (h->backing_off < h->header_len ||
            !qcow2__in_range(h->backing_off, h->backing_len, ext_area_end))
            return qcow2__corrupt(img,
                                  "backing file name at 0x%" PRIx64 " (%" PRIu32
                                  " bytes) lies outside the header cluster",
                                  h->backing_off, h->backing_len);
        ext_area_end = h->backing_off;
    }
    rc = parse_extensions(img, buf, h->header_len, ext_area_end);
    if (rc)
        return rc;

    if (h->incompat & ~QCOW2_INCOMPAT_KNOWN_MASK)
        return refuse_unknown_incompat(img, h->incompat & ~QCOW2_INCOMPAT_KNOWN_MASK);
    if (h->crypt_method)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "encrypted images (%s, crypt_method %" PRIu32 ") are not supported",
                          crypt_name(h->crypt_method), h->crypt_method);
    if (h->incompat & QCOW2_INCOMPAT_DATA_FILE)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "images with an external data file are not supported");
    if (h->incompat & QCOW2_INCOMPAT_COMPRESSION) {
        if (h->header_len <= 104)
            return qcow2__corrupt(img, "compression type bit is set but the header has no "
                                       "compression_type field");
        if (h->compression_type == QCOW2_COMPRESSION_ZLIB)
            return qcow2__corrupt(img, "compression type bit is set but compression_type is "
                                       "zlib (0)");
    } else if (h->compression_type != QCOW2_COMPRESSION_ZLIB) {
        return qcow2__corrupt(img, "compression_type is %u but the compression type bit is not "
                                   "set",
                              h->compression_type);
    }
    if (h->compression_type > QCOW2_COMPRESSION_ZSTD)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "unsupported compression type %u", h->compression_type);

    img->hdr_bytes = qcow2__min(qcow2__max(img->ext_end, h->backing_off + h->backing_len),
                                buf_len);
    if (h->backing_off) {
        const char *name = (const char *)buf + h->backing_off;

        if (memchr(name, '\0', h->backing_len))
            return qcow2__corrupt(img, "backing file name contains a NUL byte");
        img->backing_name = qcow2__strndup(name, h->backing_len);
        if (!img->backing_name)
            return qcow2__nomem();
    }

    if (h->size > QCOW2_MAX_VIRTUAL_SIZE)
        return qcow2__corrupt(img, "virtual size %" PRIu64 " is too large", h->size);
    /* qemu sees the disk in whole sectors: a partial last sector is not there. */
    img->size = h->size & ~511ull;

    /* Geometry. */
    img->extl2 = (h->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
    if (img->extl2 && img->cluster_bits < QCOW2_MIN_EXTL2_CLUSTER_BITS)
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                          "extended L2 entries need clusters of at least 16 KiB (cluster_bits "
                          "%" PRIu32 ")",
                          img->cluster_bits);
    img->l2e_bytes = img->extl2 ? 16 : 8;
    img->l2_bits = img->cluster_bits - (img->extl2 ? 4 : 3);
    img->l2_entries = 1ull << img->l2_bits;
    img->sc_bits = img->extl2 ? img->cluster_bits - 5 : img->cluster_bits;
    img->csize_shift = 62 - (img->cluster_bits - 8);
    img->csize_mask = (1ull << (img->cluster_bits - 8)) - 1;
    img->coff_mask = (1ull << img->csize_shift) - 1;

    /* Tables: sizes within the caps, aligned, inside the file, not overlapping. */
    l1_bytes = (uint64_t)h->l1_size * 8;
    if (l1_bytes > QCOW2_MAX_L1_BYTES)
        return qcow2__corrupt(img, "L1 table has %" PRIu32 " entries (at most %llu)", h->l1_size,
                              QCOW2_MAX_L1_BYTES / 8);
    per_l1 = 1ull << (img->cluster_bits + img->l2_bits);
    l1_need = h->size / per_l1 + (h->size % per_l1 != 0);
    if (h->l1_size < l1_need)
        return qcow2__corrupt(img,
                              "L1 table has %" PRIu32 " entries, too few for the virtual size "
                              "(needs %" PRIu64 ")",
                              h->l1_size, l1_need);
    rc = check_table(img, "L1 table", h->l1_off, l1_bytes);
    if (rc)
        return rc;
    rc = check_reftable(img, l1_bytes);
    if (rc) {
        /*
         * A check may open it anyway: the refcounts can be rebuilt from the
         * references (qemu does the same). The handle then has no refcount
         * table at all, and nothing but the repair writes.
         */
        if (!(img->opts.flags & QCOW2_OPEN_CHECK))
            return rc;
        img->rt_broken = true;
    }
    /* qemu refuses a misaligned snapshot table offset even when there are no snapshots. */
    rc = check_table(img, "snapshot table", h->snap_off, 0);
    if (rc)
        return rc;
    if ((h->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW) && !(h->incompat & QCOW2_INCOMPAT_DATA_FILE))
        return qcow2__corrupt(img, "the data-file-raw bit is set, but there is no external data "
                                   "file (qemu refuses it too)");
    if (h->nb_snapshots) {
        if (h->snap_off == 0 || h->snap_off >= img->file_size)
            return qcow2__corrupt(img, "snapshot table at 0x%" PRIx64 " lies outside the file; "
                                  "refused, where qemu would read zeroes",
                                  h->snap_off);
    }
    return 0;
}

void qcow2__header_free(qcow2_image *img)
{
    qcow2__free(img->hdr.tail);
    img->hdr.tail = NULL;
    qcow2__free(img->features);
    img->features = NULL;
    for (uint32_t i = 0; i < img->nb_exts; i++)
        qcow2__free(img->exts[i].data);
    qcow2__free(img->exts);
    img->exts = NULL;
    img->nb_exts = 0;
    qcow2__free(img->bitmaps_ext);
    img->bitmaps_ext = NULL;
    qcow2__free(img->backing_name);
    img->backing_name = NULL;
    qcow2__free(img->backing_fmt);
    img->backing_fmt = NULL;
}

/* Append one extension at *off; false when it does not fit before limit. */
static bool put_ext(uint8_t *buf, uint64_t *off, uint64_t limit, uint32_t type, const void *data,
                    uint32_t len)
{
    uint64_t need = 8 + qcow2__align_up(len, 8);

    if (*off + need > limit)
        return false;
    qcow2__put_be32(buf + *off, type);
    qcow2__put_be32(buf + *off + 4, len);
    memcpy(buf + *off + 8, data, len);
    *off += need;
    return true;
}

static int serialize(qcow2_image *img, uint8_t *buf, size_t buf_len, bool with_features,
                     size_t *used_out)
{
    const struct qcow2__hdr *h = &img->hdr;
    uint64_t off, limit = buf_len;
    bool ok = true;

    qcow2__put_be32(buf, QCOW2_MAGIC);
    qcow2__put_be32(buf + 4, h->version);
    qcow2__put_be32(buf + 20, h->cluster_bits);
    qcow2__put_be64(buf + 24, img->size);
    qcow2__put_be32(buf + 32, h->crypt_method);
    qcow2__put_be32(buf + 36, h->l1_size);
    qcow2__put_be64(buf + 40, h->l1_off);
    qcow2__put_be64(buf + 48, h->rt_off);
    qcow2__put_be32(buf + 56, h->rt_clusters);
    qcow2__put_be32(buf + 60, h->nb_snapshots);
    qcow2__put_be64(buf + 64, h->snap_off);
    if (h->version >= 3) {
        qcow2__put_be64(buf + 72, h->incompat);
        qcow2__put_be64(buf + 80, h->compat);
        qcow2__put_be64(buf + 88, h->autoclear);
        qcow2__put_be32(buf + 96, h->refcount_order);
        qcow2__put_be32(buf + 100, h->header_len);
        if (h->header_len > 104)
            buf[104] = h->compression_type;
        if (h->tail_len)
            memcpy(buf + QCOW2_V3_HEADER_LEN, h->tail, h->tail_len);
    }
    off = h->header_len;
    if (img->backing_fmt)
        ok = ok && put_ext(buf, &off, limit, QCOW2_EXT_BACKING_FORMAT, img->backing_fmt,
                           (uint32_t)strlen(img->backing_fmt));
    if (img->nb_features && with_features) {
        uint8_t *ft = qcow2__calloc(img->nb_features, QCOW2_FEATURE_ENTRY_LEN);
        if (!ft)
            return qcow2__nomem();
        for (uint32_t i = 0; i < img->nb_features; i++) {
            uint8_t *e = ft + (size_t)i * QCOW2_FEATURE_ENTRY_LEN;
            e[0] = img->features[i].type;
            e[1] = img->features[i].bit;
            memcpy(e + 2, img->features[i].name, strlen(img->features[i].name));
        }
        ok = ok && put_ext(buf, &off, limit, QCOW2_EXT_FEATURE_TABLE, ft,
                           img->nb_features * QCOW2_FEATURE_ENTRY_LEN);
        qcow2__free(ft);
    }
    if (img->bitmaps_ext)
        ok = ok && put_ext(buf, &off, limit, QCOW2_EXT_BITMAPS, img->bitmaps_ext,
                           img->bitmaps_ext_len);
    for (uint32_t i = 0; i < img->nb_exts; i++)
        ok = ok && put_ext(buf, &off, limit, img->exts[i].type, img->exts[i].data,
                           img->exts[i].len);
    if (!ok || off + 8 > limit)
        return qcow2__err(QCOW2_EINVAL, 0, img->name, "header extensions do not fit in cluster 0");
    off += 8; /* end marker: zeroes */
    if (img->backing_name) {
        size_t len = strlen(img->backing_name);
        if (len > QCOW2_MAX_BACKING_NAME || off + len > limit)
            return qcow2__err(QCOW2_EINVAL, 0, img->name,
                              "backing file name does not fit in the header cluster");
        memcpy(buf + off, img->backing_name, len);
        qcow2__put_be64(buf + 8, off);
        qcow2__put_be32(buf + 16, (uint32_t)len);
        img->hdr.backing_off = off;
        img->hdr.backing_len = (uint32_t)len;
        off += len;
    } else {
        img->hdr.backing_off = 0;
        img->hdr.backing_len = 0;
    }
    *used_out = (size_t)off;
    return 0;
}

/*
 * The feature-name table is only an aid for messages. A new one is left out
 * when the header would not fit in its first 512-byte sector with it: a
 * header that fits in one sector is rewritten with one sector write, which
 * storage applies whole or not at all, so a crash never leaves a header
 * naming half-written bytes. A table the image already has is kept wherever
 * cluster 0 has room for it, as qemu keeps it (qcow2__header_write then
 * writes the part past the first sector first). features false: leave it out.
 */
static int serialize_header(qcow2_image *img, uint8_t *buf, size_t buf_len, bool features,
                            size_t *used_out)
{
    size_t used = 0;
    int rc = serialize(img, buf, buf_len, features, &used);

    if ((rc == QCOW2_EINVAL || (!rc && used > QCOW2_HEADER_SECTOR && !img->features_kept)) &&
        features && img->nb_features) {
        memset(buf, 0, buf_len);
        rc = serialize(img, buf, buf_len, false, &used);
    }
    if (!rc && used_out)
        *used_out = used;
    return rc;
}

int qcow2__header_serialize(qcow2_image *img, uint8_t *buf, size_t buf_len, size_t *used_out)
{
    return serialize_header(img, buf, buf_len, true, used_out);
}

/*
 * Until the new first sector is on disk, the old one is the header, and it
 * refers to bytes past the first sector: the old extension area's tail and
 * the old backing name. Whatever is written there first must leave those
 * bytes as they are. Extensions cannot move (they follow the header), so
 * where they reach past the first sector their bytes must equal the old
 * ones wherever the old header refers; the backing name can go anywhere in
 * cluster 0, so it moves past the old name when they would share a byte.
 */
static int place_tail(qcow2_image *img, uint8_t *buf, size_t buf_len, size_t *used,
                      uint64_t ext_end, uint64_t old_ext_end, uint64_t old_name_off,
                      uint64_t old_name_end)
{
    const uint64_t sector = QCOW2_HEADER_SECTOR;
    uint64_t name_len = img->hdr.backing_len, name_off = img->hdr.backing_off;
    uint64_t old_end = qcow2__max(old_ext_end, old_name_end);
    uint8_t *old = NULL;
    int rc = 0;

    if (ext_end > sector && old_end > sector) {
        uint64_t n = old_end - sector;
        old = qcow2__malloc((size_t)n);
        if (!old)
            return qcow2__nomem();
        rc = qcow2__io_read(img->io, img->name, old, (size_t)n, sector);
        for (uint64_t i = sector; !rc && i < ext_end && i < old_end; i++) {
            bool referred = i < old_ext_end || (i >= old_name_off && i < old_name_end);
            if (referred && buf[i] != old[i - sector])
                rc = qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                                "header extensions reach past the first sector and would change "
                                "in place; rewriting them is not crash-safe");
        }
        qcow2__free(old);
        if (rc)
            return rc;
    }
    if (!name_len || name_off + name_len <= sector)
        return 0;
    /* The part past the first sector must not land on bytes the old header uses. */
    if (qcow2__ranges_meet(qcow2__max(name_off, sector), name_off + name_len, sector, old_ext_end) ||
        qcow2__ranges_meet(qcow2__max(name_off, sector), name_off + name_len, old_name_off, old_name_end)) {
        uint64_t to = qcow2__max(qcow2__max(old_end, ext_end), sector);
        if (to + name_len > buf_len)
            return qcow2__err(QCOW2_EUNSUPPORTED, 0, img->name,
                              "no room in the header cluster to write the backing file name "
                              "crash-safely");
        memmove(buf + to, buf + name_off, (size_t)name_len);
        memset(buf + name_off, 0, (size_t)qcow2__min(name_len, to - name_off));
        qcow2__put_be64(buf + 8, to);
        img->hdr.backing_off = to;
        *used = (size_t)(to + name_len);
    }
    return 0;
}

/*
 * Rewrite cluster 0. The first sector holds the fields that say where
 * everything else is; it is written last and alone:
 *  - a header within one sector: that sector, flushed; then stale bytes the
 *    old header used past it are cleared (nothing refers to them any more);
 *  - a larger header: the bytes past the first sector first (see place_tail:
 *    never over bytes the old header refers to), flushed, then the first
 *    sector, flushed. A crash at any point leaves the old header or the new
 *    one, each with every byte it refers to.
 */
static int header_write(qcow2_image *img, bool features)
{
    size_t len = (size_t)img->cluster_size, used = 0, sector = QCOW2_HEADER_SECTOR;
    uint64_t old_name_off = img->hdr.backing_off,
             old_name_end = img->hdr.backing_off + img->hdr.backing_len,
             old_ext_end = img->ext_end, ext_end = 0;
    uint8_t *buf = qcow2__calloc(1, len);
    int rc;

    if (!buf)
        return qcow2__nomem();
    rc = serialize_header(img, buf, len, features, &used);
    ext_end = img->hdr.backing_len ? img->hdr.backing_off : used;
    if (!rc && used > sector)
        rc = place_tail(img, buf, len, &used, ext_end, old_ext_end, old_name_off, old_name_end);
    if (rc) {
        img->hdr.backing_off = old_name_off;
        img->hdr.backing_len = (uint32_t)(old_name_end - old_name_off);
        goto out;
    }
    if (used > sector) {
        /* The extensions' tail and the name; not the gap between them (old bytes). */
        if (ext_end > sector)
            rc = qcow2__io_write(img->io, img->name, buf + sector, ext_end - sector, sector);
        if (!rc && img->hdr.backing_len) {
            uint64_t from = qcow2__max(img->hdr.backing_off, sector);
            if (from < used)
                rc = qcow2__io_write(img->io, img->name, buf + from, used - from, from);
        }
        if (!rc)
            rc = qcow2__sync(img);
    }
    if (!rc)
        rc = qcow2__io_write(img->io, img->name, buf, qcow2__min(sector, len), 0);
    if (!rc)
        rc = qcow2__sync(img);
    if (!rc && img->hdr_bytes > qcow2__max(used, sector)) {
        size_t from = qcow2__max(used, sector);
        rc = qcow2__io_write(img->io, img->name, buf + from, img->hdr_bytes - from, from);
    }
    if (!rc) {
        img->hdr_bytes = qcow2__max(used, sector);
        img->ext_end = ext_end;
        img->header_dirty = false;
    } else if (used > sector) {
        /* Which header is on disk is unknown now, and a retry could write over the
         * other one's bytes: no more writes through this handle. */
        rc = qcow2__fatal(img, rc);
    }
out:
    qcow2__free(buf);
    return rc;
}

/*
 * When a kept feature-name table would have to move over bytes past the
 * first sector that the old header refers to (an extension before it went
 * away), the header is written twice: without the table (the old bytes are
 * then free), and with it. Each write is crash-safe on its own.
 */
int qcow2__header_write(qcow2_image *img)
{
    int rc = header_write(img, true);

    if (rc != QCOW2_EUNSUPPORTED || !img->features_kept || !img->nb_features)
        return rc;
    rc = header_write(img, false);
    if (!rc && header_write(img, true) == QCOW2_EUNSUPPORTED)
        return 0; /* no room past the first sector: the header stays without the table */
    return rc;
}
