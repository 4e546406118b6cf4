/*
 * Checks that decompressing any byte string as one deflate or zstd cluster
 * (qcow2__decompress, buffers only) either fills exactly dst_len bytes or
 * fails cleanly, deterministically, with every shorter cluster a prefix of
 * the longer one, and that what qcow2__compress produces decompresses back
 * to the input even with garbage behind the stream.
 */
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "qcow2_format.h"
#include "qcow2_int.h"
#include "fuzz_helpers.h"

#define PARAM_BYTES 8
/* Largest cluster (2 MiB, QCOW2_MAX_CLUSTER_BITS): dst_len never exceeds it. */
#define MAX_DST ((size_t)1 << QCOW2_MAX_CLUSTER_BITS)

static void round_trip(unsigned type, const uint8_t *src, size_t len, size_t garbage_len)
{
    uint8_t *comp, *back;
    long clen;
    int rc;

    if (len < 2 || len > MAX_DST)
        return;
    /* Callers give cluster_size - 1 bytes of room, plus sector rounding slack. */
    comp = malloc(len - 1 + garbage_len);
    back = malloc(len);
    FUZZ_ASSERT(comp != NULL && back != NULL);
    clen = qcow2__compress(type, comp, len - 1, src, len);
    FUZZ_ASSERT_MSG(clen >= 0, "compress failed with %ld", clen);
    if (clen > 0) {
        FUZZ_ASSERT((size_t)clen <= len - 1);
        /* What follows a stream on disk is another cluster's bytes. */
        memcpy(comp + clen, src, garbage_len < len ? garbage_len : len);
        rc = qcow2__decompress(type, back, len, comp,
                               (size_t)clen + (garbage_len < len ? garbage_len : len));
        FUZZ_ASSERT_MSG(rc == 0, "type %u: own %ld-byte stream of %zu bytes does not decompress (%d)",
                        type, clen, len, rc);
        FUZZ_ASSERT_MSG(memcmp(back, src, len) == 0, "type %u: round trip of %zu bytes differs",
                        type, len);
    }
    free(comp);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_producer fp;
    unsigned type;
    size_t dst_len, shorter;
    uint8_t *dst, *again;
    int rc, rc2;

    fuzz_producer_init(&fp, data, size, PARAM_BYTES);
    /* 0 deflate, 1 zstd, 2 an unknown type (must be refused). */
    type = (unsigned)fuzz_producer_range(&fp, 0, 2);
    dst_len = (size_t)fuzz_producer_range(&fp, 0, MAX_DST);
    shorter = (size_t)fuzz_producer_range(&fp, 0, MAX_DST);
    shorter = dst_len ? shorter % (dst_len + 1) : 0;

    dst = malloc(dst_len ? dst_len : 1);
    again = malloc(dst_len ? dst_len : 1);
    FUZZ_ASSERT(dst != NULL && again != NULL);
    memset(dst, 0xa5, dst_len);
    memset(again, 0x5a, dst_len);

    rc = qcow2__decompress(type, dst, dst_len, fp.payload, fp.payload_len);
    if (type > QCOW2_COMPRESSION_ZSTD && dst_len > 0)
        FUZZ_ASSERT(rc == QCOW2_EUNSUPPORTED);
    FUZZ_ASSERT(rc <= 0);
    rc2 = qcow2__decompress(type, again, dst_len, fp.payload, fp.payload_len);
    FUZZ_ASSERT_MSG(rc == rc2, "decompressing twice gave %d then %d", rc, rc2);
    if (rc == 0) {
        FUZZ_ASSERT_MSG(memcmp(dst, again, dst_len) == 0, "two decompressions differ");
        /* Decoders stop when the cluster is full: a shorter one is a prefix. */
        rc2 = qcow2__decompress(type, again, shorter, fp.payload, fp.payload_len);
        FUZZ_ASSERT_MSG(rc2 == 0, "%zu bytes decompress but the first %zu do not (%d)", dst_len,
                        shorter, rc2);
        FUZZ_ASSERT_MSG(memcmp(dst, again, shorter) == 0, "a %zu-byte prefix differs", shorter);
    }
    free(dst);
    free(again);

    if (type <= QCOW2_COMPRESSION_ZSTD)
        round_trip(type, fp.payload, fp.payload_len, (size_t)fuzz_producer_range(&fp, 0, 1024));
    return 0;
}
