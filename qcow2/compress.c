/*
 * Compressed clusters: buffer-to-buffer deflate and zstd, no I/O. The read
 * path (read.c) hands in the bytes of one compressed cluster as found on
 * disk, sector-rounded and possibly followed by another cluster's data; the
 * write path hands in one guest cluster. Below are zlib and libzstd, each
 * with a context created per call (no state is kept between calls).
 *
 * Format facts (reference §1.6): deflate clusters are raw deflate streams
 * with no zlib header, written by QEMU with a 4 KiB window (windowBits -12).
 * We inflate with the largest window (-15), which decodes every -12 stream
 * and also streams from writers that used a bigger window. zstd clusters are
 * one or more frames with no length prefix. Both decoders stop as soon as
 * the cluster is full, so whatever follows the stream is never looked at.
 *
 * Decoder memory is bounded by the codecs: zlib's 32 KiB window, zstd's
 * default window limit (2^27 bytes), plus the caller's buffers.
 */
#include <limits.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "qcow2_int.h"

#define DEFLATE_WINDOW_BITS_WRITE (-12)
#define DEFLATE_WINDOW_BITS_READ (-15)
#define DEFLATE_MEM_LEVEL 9

/*
 * Inflate until dst is full. Z_BUF_ERROR, Z_OK and even Z_DATA_ERROR are
 * fine once all dst_len bytes are out: the input is only sector-precise and
 * inflate may have been looking at the garbage behind the stream.
 */
static int inflate_cluster(uint8_t *dst, size_t dst_len, const uint8_t *src, size_t src_len)
{
    z_stream zs;
    int zrc;

    if (dst_len > UINT_MAX)
        return QCOW2_ECORRUPT;
    memset(&zs, 0, sizeof(zs));
    zrc = inflateInit2(&zs, DEFLATE_WINDOW_BITS_READ);
    if (zrc == Z_MEM_ERROR)
        return qcow2__nomem();
    if (zrc != Z_OK)
        return qcow2__err(QCOW2_ERROR, 0, NULL, "zlib: cannot start decompression (%d)", zrc);
    /* zlib's next_in is not const-qualified; it never writes through it. */
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)qcow2__min(src_len, UINT_MAX);
    zs.next_out = dst;
    zs.avail_out = (uInt)dst_len;
    zrc = inflate(&zs, Z_FINISH);
    inflateEnd(&zs);
    if (zrc == Z_MEM_ERROR)
        return qcow2__nomem();
    return zs.avail_out == 0 ? 0 : QCOW2_ECORRUPT;
}

/* Decode frames until dst is full; trailing bytes are never looked at. */
static int zstd_decompress_cluster(uint8_t *dst, size_t dst_len, const uint8_t *src,
                                   size_t src_len)
{
    ZSTD_DCtx *dctx;
    ZSTD_inBuffer in = {src, src_len, 0};
    ZSTD_outBuffer out = {dst, dst_len, 0};
    int rc = QCOW2_ECORRUPT;

    dctx = ZSTD_createDCtx();
    if (!dctx)
        return qcow2__nomem();
    while (out.pos < out.size) {
        size_t in_before = in.pos;
        size_t out_before = out.pos;
        size_t zrc = ZSTD_decompressStream(dctx, &out, &in);

        if (ZSTD_isError(zrc)) {
            if (ZSTD_getErrorCode(zrc) == ZSTD_error_memory_allocation)
                rc = qcow2__nomem();
            goto out_free;
        }
        /* No input left and no output made: the stream is truncated. */
        if (in.pos == in_before && out.pos == out_before)
            goto out_free;
    }
    rc = 0;
out_free:
    ZSTD_freeDCtx(dctx);
    return rc;
}

int qcow2__decompress(unsigned type, void *dst, size_t dst_len, const void *src, size_t src_len)
{
    if (dst_len == 0)
        return 0;
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return inflate_cluster(dst, dst_len, src, src_len);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_decompress_cluster(dst, dst_len, src, src_len);
    default:
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, NULL, "compression type %u is not supported",
                          type);
    }
}

/* Raw deflate as QEMU writes it; 0 when the result does not fit dst_cap. */
static long deflate_cluster(uint8_t *dst, size_t dst_cap, const uint8_t *src, size_t src_len)
{
    z_stream zs;
    int zrc;

    if (src_len > UINT_MAX)
        return qcow2__err(QCOW2_EINVAL, 0, NULL, "cluster of %zu bytes is too big to compress",
                          src_len);
    memset(&zs, 0, sizeof(zs));
    zrc = deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, DEFLATE_WINDOW_BITS_WRITE,
                       DEFLATE_MEM_LEVEL, Z_DEFAULT_STRATEGY);
    if (zrc == Z_MEM_ERROR)
        return qcow2__nomem();
    if (zrc != Z_OK)
        return qcow2__err(QCOW2_ERROR, 0, NULL, "zlib: cannot start compression (%d)", zrc);
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)src_len;
    zs.next_out = dst;
    zs.avail_out = (uInt)qcow2__min(dst_cap, UINT_MAX);
    zrc = deflate(&zs, Z_FINISH);
    deflateEnd(&zs);
    if (zrc == Z_STREAM_END)
        return (long)zs.total_out;
    if (zrc == Z_OK || zrc == Z_BUF_ERROR)
        return 0; /* out of room */
    if (zrc == Z_MEM_ERROR)
        return qcow2__nomem();
    return qcow2__err(QCOW2_ERROR, 0, NULL, "zlib: compression failed (%d)", zrc);
}

/* One zstd frame (with the content size), as QEMU writes it; 0 when it does not fit. */
static long zstd_compress_cluster(uint8_t *dst, size_t dst_cap, const uint8_t *src,
                                  size_t src_len)
{
    ZSTD_CCtx *cctx;
    ZSTD_inBuffer in = {src, src_len, 0};
    ZSTD_outBuffer out = {dst, dst_cap, 0};
    long ret;

    cctx = ZSTD_createCCtx();
    if (!cctx)
        return qcow2__nomem();
    for (;;) {
        size_t zrc = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);

        if (ZSTD_isError(zrc)) {
            if (ZSTD_getErrorCode(zrc) == ZSTD_error_dstSize_tooSmall)
                ret = 0;
            else if (ZSTD_getErrorCode(zrc) == ZSTD_error_memory_allocation)
                ret = qcow2__nomem();
            else
                ret = qcow2__err(QCOW2_ERROR, 0, NULL, "zstd: compression failed: %s",
                                 ZSTD_getErrorName(zrc));
            goto out_free;
        }
        if (zrc == 0) {
            ret = (long)out.pos;
            goto out_free;
        }
        if (out.pos == out.size) {
            ret = 0; /* more to flush but no room: does not fit */
            goto out_free;
        }
    }
out_free:
    ZSTD_freeCCtx(cctx);
    return ret;
}

long qcow2__compress(unsigned type, void *dst, size_t dst_cap, const void *src, size_t src_len)
{
    if (dst_cap == 0 || dst_cap > LONG_MAX)
        return 0;
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return deflate_cluster(dst, dst_cap, src, src_len);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_compress_cluster(dst, dst_cap, src, src_len);
    default:
        return qcow2__err(QCOW2_EUNSUPPORTED, 0, NULL, "compression type %u is not supported",
                          type);
    }
}
