/*
 * Checks that a backing chain spread over up to four in-memory files (the
 * input split at "FUZZSPLT" into /m/a, the top, then /m/b, /m/c, /m/d, so
 * that backing names such as "b" resolve) opens or fails cleanly, never
 * loops or goes deeper than QCOW2_MAX_CHAIN_DEPTH, and that reads and block
 * status through the chain never crash, repeat, stay within its depth, and
 * that reads through the chain map give what the layer-by-layer walk gives.
 */
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "fuzz_helpers.h"
#include "qcow2_int.h"
#include "memfs.h"

#define PARAM_BYTES 32
#define SPLIT "FUZZSPLT"
#define SPLIT_LEN 8
#define MAX_FILES 4
#define MAX_READS 8
#define MAX_READ_LEN (64u << 10)

static const char *const names[MAX_FILES] = {"/m/a", "/m/b", "/m/c", "/m/d"};

static void check_error(int rc)
{
    const qcow2_error *err = qcow2_error_last();

    FUZZ_ASSERT(rc < 0);
    FUZZ_ASSERT(err->message != NULL && err->message[0] != '\0');
    FUZZ_ASSERT(strchr(err->message, '\n') == NULL);
}

static void exercise(qcow2_image *img, fuzz_producer *fp)
{
    uint64_t vsize = qcow2_image_size(img);
    unsigned depth = qcow2_image_chain_length(img);
    uint8_t *buf = malloc(MAX_READ_LEN), *again = malloc(MAX_READ_LEN);
    unsigned n = (unsigned)fuzz_producer_range(fp, 1, MAX_READS);

    FUZZ_ASSERT(buf != NULL && again != NULL);
    for (unsigned i = 0; i < n && vsize > 0; i++) {
        uint64_t off = fuzz_producer_range(fp, 0, vsize - 1);
        uint64_t room = vsize - off;
        size_t len = (size_t)fuzz_producer_range(fp, 1, room < MAX_READ_LEN ? room : MAX_READ_LEN);
        qcow2_extent ext;
        int rc;

        rc = qcow2_image_read(img, buf, len, off);
        /* The chain map (read.c) and the layer-by-layer walk agree, failures included. */
        FUZZ_ASSERT_MSG(qcow2__read_walk(img, again, len, off) == rc,
                        "the chain map and the walk disagree on failing");
        if (rc != 0) {
            check_error(rc);
            continue;
        }
        FUZZ_ASSERT_MSG(memcmp(buf, again, len) == 0, "the chain map and the walk read differently");
        rc = qcow2_image_read(img, again, len, off);
        FUZZ_ASSERT(rc == 0);
        FUZZ_ASSERT_MSG(memcmp(buf, again, len) == 0, "two reads through the chain differ");
        rc = qcow2_image_block_status(img, NULL, off, len, &ext);
        if (rc != 0) {
            check_error(rc);
            continue;
        }
        FUZZ_ASSERT(ext.start == off && ext.length > 0 && ext.length <= len);
        FUZZ_ASSERT_MSG(ext.depth < depth || !(ext.flags & QCOW2_EXT_PRESENT),
                        "extent at depth %u of a %u-layer chain", ext.depth, depth);
        if (ext.flags & QCOW2_EXT_ZERO)
            for (uint64_t k = 0; k < ext.length; k++)
                FUZZ_ASSERT_MSG(buf[k] == 0, "a zero extent does not read as zeroes");
    }
    free(buf);
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    qcow2_io *io = NULL;
    fuzz_producer fp;
    memfs *fs;
    const uint8_t *p, *end;
    unsigned nfiles = 0, len;
    int rc;

    fuzz_producer_init(&fp, data, size, PARAM_BYTES);
    fs = memfs_new();
    FUZZ_ASSERT(fs != NULL);
    p = fp.payload;
    end = fp.payload + fp.payload_len;
    while (nfiles < MAX_FILES) {
        const uint8_t *cut = nfiles + 1 < MAX_FILES
                                 ? memmem(p, (size_t)(end - p), SPLIT, SPLIT_LEN)
                                 : NULL;
        size_t n = cut ? (size_t)(cut - p) : (size_t)(end - p);

        FUZZ_ASSERT(memfs_put(fs, names[nfiles], p, n) == 0);
        nfiles++;
        if (!cut)
            break;
        p = cut + SPLIT_LEN;
    }

    opts.flags = QCOW2_OPEN_NO_LOCK;
    opts.format = fuzz_producer_range(&fp, 0, 3) ? QCOW2_FORMAT_QCOW2 : QCOW2_FORMAT_AUTO;
    opts.cache_bytes = fuzz_producer_range(&fp, 0, 1) ? 4096 : (1u << 20);
    opts.max_depth = (unsigned)fuzz_producer_range(&fp, 0, 1) ? 2 : 0;
    opts.open_fn = memfs_open;
    opts.open_payload = fs;
    FUZZ_ASSERT(memfs_open(&io, names[0], 0, fs) == 0);
    rc = qcow2_image_open_io(&img, io, names[0], &opts);
    if (rc != 0) {
        check_error(rc);
        FUZZ_ASSERT(img == NULL);
        memfs_free(fs);
        return 0;
    }
    len = qcow2_image_chain_length(img);
    FUZZ_ASSERT(len >= 1 && len <= QCOW2_MAX_CHAIN_DEPTH);
    if (opts.max_depth)
        FUZZ_ASSERT_MSG(len <= opts.max_depth, "chain of %u with max_depth %u", len,
                        opts.max_depth);
    /* Every layer is a distinct file: four files make at most four layers. */
    FUZZ_ASSERT_MSG(len <= nfiles, "a chain of %u layers over %u files", len, nfiles);
    {
        qcow2_image *l = img;
        unsigned k = 0;

        for (; l; l = qcow2_image_backing(l))
            k++;
        FUZZ_ASSERT(k == len);
    }
    exercise(img, &fp);
    qcow2_image_close(img);
    memfs_free(fs);
    return 0;
}
