/*
 * Checks that the internal snapshot table of any image that opens lists
 * consistently (every entry readable, found again by its id), and that
 * viewing a snapshot chosen by the input either fails cleanly or gives a
 * read-only handle whose size is the snapshot's disk size and whose reads
 * and block status never crash and repeat.
 */
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "fuzz_helpers.h"

#define FUZZ_NAME "fuzz.qcow2"
#define PARAM_BYTES 32
#define MAX_LISTED 256 /* entries walked per input */
#define MAX_READS 4
#define MAX_READ_LEN (64u << 10)

static void check_error(int rc)
{
    const qcow2_error *err = qcow2_error_last();

    FUZZ_ASSERT(rc < 0);
    FUZZ_ASSERT(err->message != NULL && err->message[0] != '\0');
    FUZZ_ASSERT(strchr(err->message, '\n') == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qcow2_open_opts opts = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img = NULL;
    qcow2_io *io = NULL;
    qcow2_snapshot_info si;
    fuzz_producer fp;
    size_t n, i, pick, found;
    uint64_t vsize, disk_size;
    char *id;
    uint8_t *buf, *again;
    int rc;

    fuzz_producer_init(&fp, data, size, PARAM_BYTES);
    if (qcow2_io_mem_new(&io, fp.payload, fp.payload_len) != 0)
        return 0;
    opts.flags = QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_NO_LOCK;
    opts.format = QCOW2_FORMAT_QCOW2;
    opts.cache_bytes = fuzz_producer_range(&fp, 0, 1) ? 4096 : (1u << 20);
    rc = qcow2_image_open_io(&img, io, FUZZ_NAME, &opts);
    if (rc != 0) {
        check_error(rc);
        return 0;
    }

    n = qcow2_snapshot_count(img);
    FUZZ_ASSERT(n <= 65536); /* QCOW2_MAX_SNAPSHOTS */
    for (i = 0; i < n && i < MAX_LISTED; i++) {
        rc = qcow2_snapshot_get(img, i, &si);
        FUZZ_ASSERT(rc == 0);
        FUZZ_ASSERT(si.id != NULL && si.name != NULL);
        /* Found by its id: that entry or an earlier one with the same id. */
        rc = qcow2_snapshot_find(img, si.id, &found);
        FUZZ_ASSERT_MSG(rc == 0, "snapshot %zu (id '%s') is not found by its id", i, si.id);
        FUZZ_ASSERT(found <= i);
    }
    FUZZ_ASSERT(qcow2_snapshot_get(img, n, &si) == QCOW2_EINVAL);
    if (n == 0) {
        rc = qcow2_image_view_snapshot(img, "1");
        FUZZ_ASSERT(rc == QCOW2_ENOTFOUND);
        qcow2_image_close(img);
        return 0;
    }

    pick = (size_t)fuzz_producer_range(&fp, 0, n - 1);
    rc = qcow2_snapshot_get(img, pick, &si);
    FUZZ_ASSERT(rc == 0);
    id = strdup(si.id); /* the view may replace the table's strings */
    FUZZ_ASSERT(id != NULL);
    {
        const char *which = fuzz_producer_range(&fp, 0, 1) ? id : si.name;
        qcow2_snapshot_info shown;

        /* The entry the view will show: by id first, then by name. */
        FUZZ_ASSERT(qcow2_snapshot_find(img, which, &found) == 0);
        FUZZ_ASSERT(qcow2_snapshot_get(img, found, &shown) == 0);
        disk_size = shown.disk_size;
        rc = qcow2_image_view_snapshot(img, which);
    }
    if (rc != 0) {
        check_error(rc);
        free(id);
        qcow2_image_close(img);
        return 0;
    }

    vsize = qcow2_image_size(img);
    FUZZ_ASSERT_MSG(vsize == disk_size, "view size %llu, snapshot disk size %llu",
                    (unsigned long long)vsize, (unsigned long long)disk_size);
    buf = malloc(MAX_READ_LEN);
    again = malloc(MAX_READ_LEN);
    FUZZ_ASSERT(buf != NULL && again != NULL);
    for (unsigned r = 0, nr = (unsigned)fuzz_producer_range(&fp, 1, MAX_READS); r < nr && vsize;
         r++) {
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
        FUZZ_ASSERT(rc == 0);
        FUZZ_ASSERT_MSG(memcmp(buf, again, len) == 0, "two reads of a snapshot view differ");
        rc = qcow2_image_block_status(img, NULL, off, len, &ext);
        if (rc != 0)
            check_error(rc);
        else
            FUZZ_ASSERT(ext.start == off && ext.length > 0 && ext.length <= len);
    }
    if (vsize < UINT64_MAX - 1)
        FUZZ_ASSERT(qcow2_image_read(img, buf, 1, vsize) == QCOW2_EINVAL);
    /* A view is read-only. */
    FUZZ_ASSERT(qcow2_image_write(img, buf, 1, 0) < 0);
    free(buf);
    free(again);
    free(id);
    qcow2_image_close(img);
    return 0;
}
