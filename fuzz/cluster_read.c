/*
 * Checks that reading guest ranges chosen by the input from any image that
 * opens either succeeds or fails cleanly, that reads are repeatable (the L2
 * cache never returns stale or mixed-up tables), that ranges block status
 * calls zero read as zeroes, and that reads past the virtual size are refused.
 */
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "fuzz_helpers.h"

#define FUZZ_NAME "fuzz.qcow2"
#define PARAM_BYTES 64        /* tail of the input used as read parameters */
#define MAX_READS 16          /* reads per input */
#define MAX_READ_LEN (256u << 10) /* bytes per read */

static void check_error(int rc)
{
    const qcow2_error *err = qcow2_error_last();

    FUZZ_ASSERT(rc < 0);
    FUZZ_ASSERT(err->message != NULL && err->message[0] != '\0');
    FUZZ_ASSERT(strchr(err->message, '\n') == NULL);
}

static int all_zero(const uint8_t *p, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    qcow2_io *io = NULL;
    fuzz_producer fp;
    uint8_t *buf = NULL, *again = NULL;
    uint64_t vsize;
    unsigned nreads, i;
    int rc;

    fuzz_producer_init(&fp, data, size, PARAM_BYTES);
    if (qcow2_io_mem_new(&io, fp.payload, fp.payload_len) != 0)
        return 0;
    opts.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    opts.format = QCOW2_FORMAT_QCOW2;
    /* A small cache so that eviction is exercised too. */
    opts.cache_bytes = fuzz_producer_range(&fp, 0, 1) ? 4096 : (1u << 20);
    rc = qcow2_image_open_io(&img, io, FUZZ_NAME, &opts);
    if (rc != 0) {
        check_error(rc);
        return 0;
    }
    buf = malloc(MAX_READ_LEN);
    again = malloc(MAX_READ_LEN);
    FUZZ_ASSERT(buf != NULL && again != NULL);

    vsize = qcow2_image_size(img);
    nreads = (unsigned)fuzz_producer_range(&fp, 1, MAX_READS);
    for (i = 0; i < nreads && vsize > 0; i++) {
        uint64_t off = fuzz_producer_range(&fp, 0, vsize - 1);
        uint64_t room = vsize - off;
        size_t len = (size_t)fuzz_producer_range(&fp, 1, room < MAX_READ_LEN ? room : MAX_READ_LEN);
        qcow2_extent ext;

        rc = qcow2_image_read(img, buf, len, off);
        if (rc != 0) {
            check_error(rc);
            continue;
        }
        rc = qcow2_image_read(img, again, len, off);
        FUZZ_ASSERT_MSG(rc == 0, "second read of [%llu, +%zu) failed after the first succeeded",
                        (unsigned long long)off, len);
        FUZZ_ASSERT_MSG(memcmp(buf, again, len) == 0, "two reads of [%llu, +%zu) differ",
                        (unsigned long long)off, len);

        rc = qcow2_image_block_status(img, NULL, off, len, &ext);
        if (rc != 0) {
            check_error(rc);
            continue;
        }
        FUZZ_ASSERT(ext.start == off && ext.length > 0 && ext.length <= len);
        if (ext.flags & QCOW2_EXT_ZERO)
            FUZZ_ASSERT_MSG(all_zero(buf, (size_t)ext.length),
                            "[%llu, +%llu) is reported zero but does not read as zeroes",
                            (unsigned long long)off, (unsigned long long)ext.length);
    }

    /* Past the end: refused, never read. */
    if (vsize < UINT64_MAX - 1) {
        rc = qcow2_image_read(img, buf, 1, vsize);
        FUZZ_ASSERT(rc == QCOW2_EINVAL);
    }

    free(buf);
    free(again);
    qcow2_image_close(img);
    return 0;
}
