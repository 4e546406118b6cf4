/*
 * Creating images: a new qcow2 file laid out as qemu lays it out (header,
 * refcount table, refcount block, L1 table, in that order from cluster 0),
 * or a raw file; then the requested preallocation through the ordinary
 * allocator. Callers are the public API users; below are header.c (the
 * header bytes), refcount.c and write.c (preallocation), and io.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "qcow2_int.h"

/* Feature names qemu-compatible images carry in their feature-name table (v3). */
static const struct {
    uint8_t type, bit;
    const char *name;
} feature_names[] = {
    {0, 0, "dirty bit"},      {0, 1, "corrupt bit"},         {0, 2, "external data file"},
    {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},        {2, 1, "raw external data"},
};

/* An I/O handle that forwards to another without owning it. */
struct borrow_io {
    qcow2_io base;
    qcow2_io *inner;
};

static int b_pread(qcow2_io *io, void *buf, size_t len, uint64_t off)
{
    qcow2_io *in = ((struct borrow_io *)io)->inner;
    return in->ops->pread(in, buf, len, off);
}

static int b_pwrite(qcow2_io *io, const void *buf, size_t len, uint64_t off)
{
    qcow2_io *in = ((struct borrow_io *)io)->inner;
    return in->ops->pwrite(in, buf, len, off);
}

static int b_flush(qcow2_io *io)
{
    qcow2_io *in = ((struct borrow_io *)io)->inner;
    return in->ops->flush ? in->ops->flush(in) : 0;
}

static int b_truncate(qcow2_io *io, uint64_t size)
{
    qcow2_io *in = ((struct borrow_io *)io)->inner;
    return in->ops->truncate ? in->ops->truncate(in, size) : -ENOTSUP;
}

static int b_get_size(qcow2_io *io, uint64_t *size_out)
{
    qcow2_io *in = ((struct borrow_io *)io)->inner;
    return in->ops->get_size(in, size_out);
}

static int b_punch(qcow2_io *io, uint64_t off, uint64_t len)
{
    qcow2_io *in = ((struct borrow_io *)io)->inner;
    return in->ops->punch ? in->ops->punch(in, off, len) : -ENOTSUP;
}

static int b_allocate(qcow2_io *io, uint64_t off, uint64_t len)
{
    qcow2_io *in = ((struct borrow_io *)io)->inner;
    return in->ops->allocate ? in->ops->allocate(in, off, len) : -EOPNOTSUPP;
}

static void b_close(qcow2_io *io)
{
    qcow2__free(io);
}

static const qcow2_io_ops borrow_ops = {
    .version = QCOW2_IO_OPS_VERSION,
    .pread = b_pread,
    .pwrite = b_pwrite,
    .flush = b_flush,
    .truncate = b_truncate,
    .get_size = b_get_size,
    .punch = b_punch,
    .allocate = b_allocate,
    .close = b_close,
};

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

static unsigned log2u(uint64_t v)
{
    unsigned n = 0;

    while (v > 1) {
        v >>= 1;
        n++;
    }
    return n;
}

static int check_opts(const char *name, const qcow2_create_opts *o)
{
    if (o->format != QCOW2_FORMAT_QCOW2 && o->format != QCOW2_FORMAT_RAW)
        return qcow2__err(QCOW2_EINVAL, 0, name, "unknown image format %d", (int)o->format);
    if (o->backing_file && !o->backing_format)
        return qcow2__err(QCOW2_EINVAL, 0, name,
                          "a backing file needs its format (raw or qcow2, -F)");
    if (o->backing_format && qcow2_format_from_name(o->backing_format) == QCOW2_FORMAT_AUTO)
        return qcow2__err(QCOW2_EINVAL, 0, name, "backing format '%s' is not supported",
                          o->backing_format);
    if (o->format == QCOW2_FORMAT_RAW) {
        if (o->backing_file)
            return qcow2__err(QCOW2_EINVAL, 0, name, "raw images cannot have a backing file");
        return 0;
    }
    if (o->qcow2_version != 2 && o->qcow2_version != 3)
        return qcow2__err(QCOW2_EINVAL, 0, name, "qcow2 version must be 2 (compat=0.10) or 3 "
                                                 "(compat=1.1)");
    if (!is_pow2(o->cluster_size) || o->cluster_size < 512 || o->cluster_size > (2u << 20))
        return qcow2__err(QCOW2_EINVAL, 0, name,
                          "Cluster size must be a power of two between 512 and 2048k");
    if (!is_pow2(o->refcount_bits) || o->refcount_bits > 64)
        return qcow2__err(QCOW2_EINVAL, 0, name,
                          "Refcount width must be a power of two and may not exceed 64 bits");
    if (o->qcow2_version == 2 && o->refcount_bits != 16)
        return qcow2__err(QCOW2_EINVAL, 0, name,
                          "refcount widths other than 16 bits need compat=1.1");
    if (o->qcow2_version == 2 && o->lazy_refcounts)
        return qcow2__err(QCOW2_EINVAL, 0, name, "lazy refcounts need compat=1.1");
    if (o->extended_l2 && o->qcow2_version == 2)
        return qcow2__err(QCOW2_EINVAL, 0, name, "extended L2 entries need compat=1.1");
    if (o->extended_l2 && o->cluster_size < (16u << 10))
        return qcow2__err(QCOW2_EINVAL, 0, name,
                          "extended L2 entries need clusters of at least 16 KiB");
    if (o->compression_type > QCOW2_COMPRESSION_ZSTD)
        return qcow2__err(QCOW2_EINVAL, 0, name, "unknown compression type %u",
                          o->compression_type);
    if (o->compression_type == QCOW2_COMPRESSION_ZSTD && o->qcow2_version == 2)
        return qcow2__err(QCOW2_EINVAL, 0, name, "zstd compression needs compat=1.1");
    if (o->backing_file && o->preallocation != QCOW2_PREALLOC_OFF && !o->extended_l2)
        return qcow2__err(QCOW2_EINVAL, 0, name,
                          "a backing file and preallocation need extended L2 entries");
    return 0;
}

/* Size of the backing file, for a create without an explicit size. */
static int backing_size(const char *name, const qcow2_create_opts *o, uint64_t *size_out)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *b = NULL;
    const char *slash = strrchr(name, '/');
    char *path;
    int rc;

    if (o->backing_file[0] == '/' || !slash) {
        path = qcow2__strdup(o->backing_file);
    } else {
        size_t dir = (size_t)(slash - name) + 1;
        path = qcow2__malloc(dir + strlen(o->backing_file) + 1);
        if (path) {
            memcpy(path, name, dir);
            strcpy(path + dir, o->backing_file);
        }
    }
    if (!path)
        return qcow2__nomem();
    oo.format = qcow2_format_from_name(o->backing_format);
    oo.flags = QCOW2_OPEN_NO_LOCK;
    oo.open_fn = o->open_fn;
    oo.open_payload = o->open_payload;
    rc = qcow2_image_open(&b, path, &oo);
    qcow2__free(path);
    if (rc)
        return rc;
    *size_out = qcow2_image_size(b);
    qcow2_image_close(b);
    return 0;
}

static int create_raw(qcow2_io *io, const char *name, const qcow2_create_opts *o, uint64_t size)
{
    int rc = qcow2__io_truncate(io, name, size);

    if (!rc && o->preallocation == QCOW2_PREALLOC_FALLOC)
        rc = qcow2__io_allocate(io, name, 0, size);
    else if (!rc && o->preallocation == QCOW2_PREALLOC_FULL)
        rc = qcow2__io_write_zeroes(io, name, 0, size);
    if (!rc)
        rc = qcow2__io_flush(io, name);
    return rc;
}

/*
 * The initial qcow2 layout: cluster 0 header, then the refcount table, the
 * refcount blocks and the L1 table; refcount 1 for each of those clusters.
 */
static int create_qcow2(qcow2_io *io, const char *name, const qcow2_create_opts *o, uint64_t size)
{
    qcow2_image img;
    uint64_t cs = o->cluster_size, per_block, l2_entries, per_l1, l1_entries, l1_clusters;
    uint64_t rt_clusters = 1, nb_blocks = 1, total, rt_entries;
    uint8_t *buf = NULL;
    size_t buf_len;
    int rc;

    memset(&img, 0, sizeof(img));
    img.io = io;
    img.name = (char *)(uintptr_t)name; /* serialize only reads it */
    img.cluster_bits = log2u(cs);
    img.cluster_size = cs;
    img.size = size;
    per_block = cs * 8 / o->refcount_bits;
    l2_entries = cs / (o->extended_l2 ? 16 : 8);
    per_l1 = cs * l2_entries;
    l1_entries = size / per_l1 + (size % per_l1 != 0);
    if (l1_entries * 8 > QCOW2_MAX_L1_BYTES)
        return qcow2__err(QCOW2_EINVAL, 0, name,
                          "virtual size %" PRIu64 " needs an L1 table over %llu bytes; use "
                          "larger clusters",
                          size, QCOW2_MAX_L1_BYTES);
    l1_clusters = qcow2__max(1, (l1_entries * 8 + cs - 1) / cs);
    /* Enough blocks and table to describe the header, themselves and the L1. */
    for (;;) {
        total = 1 + rt_clusters + nb_blocks + l1_clusters;
        uint64_t need_blocks = (total + per_block - 1) / per_block;
        uint64_t need_rt = (need_blocks * 8 + cs - 1) / cs;
        if (need_blocks == nb_blocks && need_rt == rt_clusters)
            break;
        nb_blocks = need_blocks;
        rt_clusters = need_rt;
    }
    if (rt_clusters * cs > QCOW2_MAX_REFTABLE_BYTES)
        return qcow2__err(QCOW2_EINVAL, 0, name, "the image would need a refcount table over %llu "
                                                 "bytes",
                          QCOW2_MAX_REFTABLE_BYTES);
    rt_entries = rt_clusters * cs / 8;
    QCOW2_UNUSED(rt_entries);

    img.hdr.version = o->qcow2_version;
    img.hdr.cluster_bits = img.cluster_bits;
    img.hdr.size = size;
    img.hdr.l1_size = (uint32_t)l1_entries;
    img.hdr.rt_off = cs;
    img.hdr.rt_clusters = (uint32_t)rt_clusters;
    img.hdr.l1_off = (1 + rt_clusters + nb_blocks) * cs;
    img.hdr.refcount_order = log2u(o->refcount_bits);
    if (o->qcow2_version >= 3) {
        img.hdr.header_len = QCOW2_V3_HEADER_LEN;
        img.hdr.compression_type = (uint8_t)o->compression_type;
        if (o->compression_type)
            img.hdr.incompat |= QCOW2_INCOMPAT_COMPRESSION;
        if (o->extended_l2)
            img.hdr.incompat |= QCOW2_INCOMPAT_EXTL2;
        if (o->lazy_refcounts)
            img.hdr.compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
        img.nb_features = (uint32_t)(sizeof(feature_names) / sizeof(feature_names[0]));
        img.features = qcow2__calloc(img.nb_features, sizeof(*img.features));
        if (!img.features)
            return qcow2__nomem();
        for (uint32_t i = 0; i < img.nb_features; i++) {
            img.features[i].type = feature_names[i].type;
            img.features[i].bit = feature_names[i].bit;
            snprintf(img.features[i].name, sizeof(img.features[i].name), "%s",
                     feature_names[i].name);
        }
    } else {
        img.hdr.header_len = QCOW2_V2_HEADER_LEN;
    }
    img.backing_name = (char *)(uintptr_t)o->backing_file;
    img.backing_fmt = (char *)(uintptr_t)o->backing_format;

    buf_len = (size_t)((1 + rt_clusters + nb_blocks) * cs);
    buf = qcow2__calloc(1, buf_len);
    if (!buf) {
        rc = qcow2__nomem();
        goto out;
    }
    rc = qcow2__header_serialize(&img, buf, (size_t)cs, NULL);
    if (rc)
        goto out;
    for (uint64_t b = 0; b < nb_blocks; b++)
        qcow2__put_be64(buf + cs + b * 8, (1 + rt_clusters + b) * cs);
    for (uint64_t c = 0; c < total; c++) {
        uint8_t *blk = buf + (1 + rt_clusters + c / per_block) * cs;
        uint64_t i = c % per_block;
        switch (o->refcount_bits) {
        case 1:
        case 2:
        case 4:
            blk[i / (8 / o->refcount_bits)] |=
                (uint8_t)(1u << ((i % (8 / o->refcount_bits)) * o->refcount_bits));
            break;
        case 8:
            blk[i] = 1;
            break;
        case 16:
            qcow2__put_be16(blk + i * 2, 1);
            break;
        case 32:
            qcow2__put_be32(blk + i * 4, 1);
            break;
        default:
            qcow2__put_be64(blk + i * 8, 1);
            break;
        }
    }
    rc = qcow2__io_truncate(io, name, 0);
    if (!rc)
        rc = qcow2__io_write(io, name, buf, buf_len, 0);
    /* The L1 table is all zeroes: extending the file provides it. */
    if (!rc)
        rc = qcow2__io_truncate(io, name, img.hdr.l1_off + l1_entries * 8);
    if (!rc && l1_entries == 0)
        rc = qcow2__io_truncate(io, name, img.hdr.l1_off);
    if (!rc)
        rc = qcow2__io_flush(io, name);
out:
    qcow2__free(img.features);
    qcow2__free(buf);
    return rc;
}

static int preallocate(qcow2_io *io, const char *name, const qcow2_create_opts *o)
{
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    struct borrow_io *bio = qcow2__calloc(1, sizeof(*bio));
    qcow2_image *img = NULL;
    int rc;

    if (!bio)
        return qcow2__nomem();
    bio->base.ops = &borrow_ops;
    bio->inner = io;
    oo.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    oo.format = QCOW2_FORMAT_QCOW2;
    rc = qcow2_image_open_io(&img, &bio->base, name, &oo);
    if (rc)
        return rc;
    rc = qcow2__preallocate(img, o->preallocation);
    if (!rc)
        rc = qcow2_image_flush(img);
    qcow2_image_close(img);
    return rc;
}

int qcow2_image_create_io(qcow2_io *io, const char *name, const qcow2_create_opts *opts)
{
    qcow2_create_opts o;
    uint64_t size;
    int rc;

    if (!io || !name || !opts)
        return qcow2__err(QCOW2_EINVAL, 0, name, "qcow2_image_create_io: missing argument");
    if (opts->version != QCOW2_CREATE_OPTS_VERSION)
        return qcow2__err(QCOW2_EINVAL, 0, name, "unknown create options version %u",
                          opts->version);
    o = *opts;
    rc = check_opts(name, &o);
    if (rc)
        return rc;
    size = o.size;
    if (size == 0 && o.backing_file) {
        rc = backing_size(name, &o, &size);
        if (rc)
            return rc;
    }
    if (size > QCOW2_MAX_VIRTUAL_SIZE)
        return qcow2__err(QCOW2_EINVAL, 0, name, "virtual size %" PRIu64 " is too large", size);
    size = qcow2__align_up(size, 512); /* as qemu-img: whole sectors */
    if (o.format == QCOW2_FORMAT_RAW)
        return create_raw(io, name, &o, size);
    rc = create_qcow2(io, name, &o, size);
    if (!rc && o.preallocation != QCOW2_PREALLOC_OFF)
        rc = preallocate(io, name, &o);
    return rc;
}

int qcow2_image_create(const char *path, const qcow2_create_opts *opts)
{
    qcow2_io *io = NULL;
    int rc;

    if (!path || !opts)
        return qcow2__err(QCOW2_EINVAL, 0, path, "qcow2_image_create: missing argument");
    rc = opts->open_fn ? opts->open_fn(&io, path, QCOW2_IO_RDWR | QCOW2_IO_CREATE, opts->open_payload)
                       : qcow2_io_posix_open(&io, path, QCOW2_IO_RDWR | QCOW2_IO_CREATE);
    if (rc < 0)
        return qcow2__io_error(rc, path, "cannot create");
    rc = qcow2_image_create_io(io, path, opts);
    qcow2_io_close(io);
    if (rc && !opts->open_fn)
        unlink(path); /* we made it: leave nothing half-written behind */
    return rc;
}
