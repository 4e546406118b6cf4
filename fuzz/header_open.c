/*
 * Checks that opening any byte string as a qcow2 image (header, extensions,
 * feature table, snapshot table, L1 and refcount validation) and querying it
 * either fails cleanly with a one-line error or yields a self-consistent
 * handle, never a crash, a hang or an unbounded allocation.
 */
#include <string.h>

#include "qcow2/qcow2.h"
#include "fuzz_helpers.h"

#define FUZZ_NAME "fuzz.qcow2"

static void check_error(int rc)
{
    const qcow2_error *err = qcow2_error_last();

    FUZZ_ASSERT(rc < 0);
    FUZZ_ASSERT(err != NULL);
    FUZZ_ASSERT(err->message != NULL && err->message[0] != '\0');
    FUZZ_ASSERT(strchr(err->message, '\n') == NULL);
    FUZZ_ASSERT(qcow2_strerror(rc) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    qcow2_io *io = NULL;
    qcow2_info info;
    qcow2_extent ext;
    uint64_t vsize, off;
    size_t nsnap, i;
    int rc, runs;

    if (qcow2_io_mem_new(&io, data, size) != 0)
        return 0;
    opts.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    opts.format = QCOW2_FORMAT_QCOW2;
    opts.cache_bytes = 1u << 20;
    rc = qcow2_image_open_io(&img, io, FUZZ_NAME, &opts); /* takes io, also on failure */
    if (rc != 0) {
        check_error(rc);
        FUZZ_ASSERT(img == NULL);
        return 0;
    }
    FUZZ_ASSERT(img != NULL);

    memset(&info, 0, sizeof(info));
    rc = qcow2_image_get_info(img, &info);
    FUZZ_ASSERT(rc == 0);
    FUZZ_ASSERT(info.format == QCOW2_FORMAT_QCOW2);
    FUZZ_ASSERT(info.virtual_size == qcow2_image_size(img));
    FUZZ_ASSERT(info.qcow2_version == 2 || info.qcow2_version == 3);
    FUZZ_ASSERT(info.cluster_size >= 512 && info.cluster_size <= (2u << 20));
    FUZZ_ASSERT((info.cluster_size & (info.cluster_size - 1)) == 0);
    FUZZ_ASSERT(info.refcount_bits >= 1 && info.refcount_bits <= 64);
    FUZZ_ASSERT((info.refcount_bits & (info.refcount_bits - 1)) == 0);
    FUZZ_ASSERT(qcow2_image_chain_length(img) == 1);
    FUZZ_ASSERT(qcow2_image_backing(img) == NULL);

    nsnap = qcow2_snapshot_count(img);
    FUZZ_ASSERT(nsnap == info.nb_snapshots);
    for (i = 0; i < nsnap && i < 64; i++) {
        qcow2_snapshot_info si;
        rc = qcow2_snapshot_get(img, i, &si);
        FUZZ_ASSERT(rc == 0);
        FUZZ_ASSERT(si.id != NULL && si.name != NULL);
    }
    {
        qcow2_snapshot_info si;
        FUZZ_ASSERT(qcow2_snapshot_get(img, nsnap, &si) == QCOW2_EINVAL);
    }

    /* Walk the first few allocation runs, then probe the last byte. */
    vsize = qcow2_image_size(img);
    off = 0;
    for (runs = 0; runs < 16 && off < vsize; runs++) {
        rc = qcow2_image_block_status(img, NULL, off, vsize - off, &ext);
        if (rc != 0) {
            check_error(rc);
            break;
        }
        FUZZ_ASSERT(ext.start == off);
        FUZZ_ASSERT(ext.length > 0 && ext.length <= vsize - off);
        FUZZ_ASSERT(ext.depth == 0);
        off += ext.length;
    }
    if (vsize > 0) {
        rc = qcow2_image_block_status(img, NULL, vsize - 1, 1, &ext);
        if (rc != 0)
            check_error(rc);
        else
            FUZZ_ASSERT(ext.length == 1);
    }

    qcow2_image_close(img);
    return 0;
}
